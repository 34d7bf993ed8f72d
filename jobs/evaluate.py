"""Evaluation commands: figures on a held-out split, and the pictures that go with them.

Evaluation runs in this process, reading the split's Parquet directly: the held-out splits are
small next to training, and the figures must come from one place (one evaluator over the whole
split, never an average of per-worker averages).
"""

from __future__ import annotations

import io
import json

import numpy as np

from jobs.datasets import read_image_source, read_table
from jobs.models import load_digit_model, load_keypoint_model
from jobs.storage import StorageOptions, exists, is_s3, join, read_bytes, write_bytes_atomic
from pose.draw import stacked
from pose.errors import UserError
from pose.feed import batches_of


def _save_png(image, folder: str | None, model_dir: str, name: str, options: StorageOptions) -> str:
    """Write a picture to `folder` (local or s3://), or beside the model when no folder is given."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    target = join(folder if folder is not None else model_dir, name)
    write_bytes_atomic(target, buffer.getvalue(), options)
    return target


def evaluate_svhn(data: str, model_dir: str, split: str, options: StorageOptions, pictures: str | None = None) -> dict:
    """Accuracy, per-class accuracy and confusion on one split; writes the confusion-matrix and
    prediction-grid PNGs. Returns the figures (and the paths of the pictures)."""
    import torch

    from pose import draw
    from pose.digit_task import DigitTask, pixels_from_rows, to_input

    model, recipe = load_digit_model(model_dir, options)
    task = DigitTask(recipe)
    rows = read_table(data, "digits", (split,), options, columns=["label", "pixels"])
    evaluator = task.evaluator()
    device = torch.device("cpu")
    for batch in batches_of(rows, 1024):
        evaluator.update(model, batch, device)
    figures = evaluator.result()

    sample = rows.slice(0, 100)
    pixels = pixels_from_rows(sample["pixels"].to_pylist())
    with torch.no_grad():
        predicted = model(to_input(torch.from_numpy(pixels))).argmax(1).numpy()
    grid = draw.digit_grid(pixels, sample["label"].to_pylist(), predicted.tolist())
    matrix = draw.confusion_matrix(
        np.asarray(figures["confusion"]),
        [str(d) for d in range(10)],
        title=f"SVHN {split}: accuracy {figures['accuracy']:.4f}",
    )
    folder = pictures if pictures is not None or is_s3(model_dir) is False else None
    figures["pictures"] = [
        _save_png(matrix, folder, model_dir, f"confusion-{split}.png", options),
        _save_png(grid, folder, model_dir, f"predictions-{split}.png", options),
    ]
    return figures


def keypoint_ground_truth(data: str, split: str, options: StorageOptions) -> dict:
    """The COCO-format ground truth of one ingested split, for pycocotools."""
    from pose.keypoint_task import ground_truth_from_tables

    images = read_table(
        data, "images", (split,), options, columns=["image_id", "split", "file_name", "width", "height"]
    )
    persons = read_table(data, "persons", (split,), options)
    return ground_truth_from_tables(images, persons)


def evaluate_keypoints(
    data: str,
    model_spec: str,
    split: str,
    options: StorageOptions,
    pictures: str | None = None,
    results_file: str | None = None,
    boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    overrides=None,
) -> dict:
    """COCO keypoint AP/AR of a keypoint model on one split, top-down from its images
    (`evaluate_topdown`: ground-truth boxes, or `boxes` by image id); for a train-keypoints run
    with ground-truth boxes also the heatmap PCK on the stored person crops and a picture of inputs,
    true and predicted heatmaps (`crop_pck`)."""
    figures = evaluate_topdown(
        data, model_spec, split, options, overrides=overrides, boxes=boxes, results_file=results_file
    )
    figures["boxes"] = "ground truth" if boxes is None else "given"
    if boxes is None and exists(join(model_spec, "model.json"), options):
        figures.update(crop_pck(data, model_spec, split, options, pictures))
    return figures


def crop_pck(data: str, model_dir: str, split: str, options: StorageOptions, pictures: str | None = None) -> dict:
    """The heatmap PCK (`pose.metrics.PckAccumulator`: predicted against target peaks, flip test) of a
    train-keypoints run on the stored `person_crops` of a split, as training validates, and a picture
    of the first batch's inputs, true and predicted heatmaps: {"pck", "pictures"}."""
    from pose.keypoint_task import KeypointBatchTransform, KeypointEvaluator, evaluation_figure, predict

    model, recipe = load_keypoint_model(model_dir, options)
    if recipe.framework != "pose-jobs":  # a reference recipe's run is scored as its published family: AP only
        return {}
    codec = recipe.codec()
    evaluator = KeypointEvaluator(codec, None)
    transform = KeypointBatchTransform(recipe, train=False)
    first = None
    for batch in batches_of(read_table(data, "person_crops", (split,), options), 64):
        prepared = transform(batch)
        keypoints, scores, heatmaps = predict(model, prepared["image"], flip_test=recipe.flip_test, codec=codec)
        evaluator.update(heatmaps, prepared["target"], prepared["target_weight"], keypoints, scores, prepared)
        if first is None:
            first = (prepared, keypoints, scores, heatmaps)
    figures = {"pck": float(evaluator.result()["pck"])}
    if first is not None:
        prepared, keypoints, scores, heatmaps = first
        picture = evaluation_figure(
            prepared["image"],
            prepared["target"],
            heatmaps,
            prepared["keypoints"],
            keypoints,
            visible=prepared["target_weight"],
            scores=scores,
        )
        folder = pictures if pictures is not None or not is_s3(model_dir) else None
        figures["pictures"] = [_save_png(picture, folder, model_dir, f"keypoints-{split}.png", options)]
    return figures


def detect_split(
    model, data: str, split: str, options: StorageOptions, *, picture_images: int = 0, picture_min_score: float = 0.5
):
    """Run a detector over every image of a split, in this process.

    Returns the `DetectorEvaluator` fed with every image (its `results` are the COCO box results,
    person category only; `result()` the box AP/AR against the split's ground truth) and, for the
    first `picture_images` images, pictures of the ground truth beside the detections scoring at
    least `picture_min_score`.
    """
    import torch

    from jobs.detector_data import IMAGE_COLUMNS, add_pixels_and_boxes, person_boxes_by_image
    from pose import draw
    from pose.detector_task import DetectorEvaluator, row_boxes
    from pose.images import decode_image
    from pose.models.detector import PERSON_LABEL

    evaluator = DetectorEvaluator(keypoint_ground_truth(data, split, options))
    boxes = person_boxes_by_image(data, (split,), options)
    images = read_table(data, "images", (split,), options, columns=IMAGE_COLUMNS)
    panels = []
    for start in range(0, images.num_rows, 8):
        rows = next(batches_of(add_pixels_and_boxes(images.slice(start, 8), boxes, options), 8))
        found = evaluator.update(model, rows, torch.device("cpu"))
        for i in range(min(len(found), picture_images - len(panels))):
            pixels = decode_image(bytes(rows["image"][i]), exif_transpose=False)
            true_boxes, iscrowd = row_boxes(rows, i)
            keep = (found[i]["scores"] >= picture_min_score) & (found[i]["labels"] == PERSON_LABEL)
            truth = draw.draw_persons(pixels, true_boxes, labels=["crowd" if c else "person" for c in iscrowd])
            detected = draw.draw_detections(
                pixels, found[i]["boxes"][keep], ["person"] * int(keep.sum()), found[i]["scores"][keep]
            )
            titles = [f"image {int(rows['image_id'][i])}: ground truth", f"detections ≥ {picture_min_score:g}"]
            panels.append(draw.side_by_side([truth, detected], titles=titles, height=360))
    return evaluator, panels


def evaluate_detector(
    data: str,
    model_spec: str,
    split: str,
    options: StorageOptions,
    pictures: str | None = None,
    results_file: str | None = None,
    arch: str | None = None,
) -> dict:
    """COCO person box AP/AR (pycocotools, iouType "bbox", crowds as ignore regions) of a detector
    on one split; writes the COCO box results JSON when asked and a picture of the first 4 images.

    model_spec: a train-detector run folder or a detector weights file (`jobs.models.load_detector`).
    The picture goes to `pictures`, else into the run folder, else (a weights file) here.
    """
    import json

    from jobs.models import load_detector

    evaluator, panels = detect_split(load_detector(model_spec, options, arch), data, split, options, picture_images=4)
    figures = evaluator.result()
    if results_file:
        write_bytes_atomic(results_file, json.dumps(evaluator.results).encode(), options)
        figures["results"] = results_file
    if panels:
        run_folder = exists(join(model_spec, "model.json"), options)
        folder = pictures if pictures is not None or run_folder else "."
        figures["pictures"] = [_save_png(stacked(panels), folder, model_spec, f"detections-{split}.png", options)]
    return figures


def _ground_truth_boxes(data: str, split: str, options: StorageOptions) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The annotated persons of a split (non-crowd, with labelled keypoints) as boxes by image id,
    score 1, in the form of `jobs.annotate.boxes_by_image`."""
    persons = read_table(
        data, "persons", (split,), options, columns=["image_id", "bbox", "num_keypoints", "iscrowd"]
    ).to_pylist()
    boxes: dict[int, tuple[list, list]] = {}
    for person in persons:
        if person["iscrowd"] or not person["num_keypoints"]:
            continue
        found, scores = boxes.setdefault(int(person["image_id"]), ([], []))
        found.append(person["bbox"])
        scores.append(1.0)
    return {i: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64)) for i, (b, s) in boxes.items()}


def evaluate_topdown(
    data: str,
    model_spec: str,
    split: str,
    options: StorageOptions,
    *,
    overrides=None,
    boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    results_file: str | None = None,
    flip_test: bool = True,
) -> dict:
    """COCO keypoint AP/AR of any keypoint model (a run folder or a published file,
    `jobs.models.load_pose_model`) on one split, top-down from the split's images as the model's
    framework cuts them (`pose.topdown.TopDownPredictor`, float32, flip test).

    The persons are the annotated ones (non-crowd, with labelled keypoints; box score 1) unless
    `boxes` gives boxes and scores by image id (`jobs.annotate.boxes_by_image`): every box, as
    the COCO protocol evaluates detections. A torchvision Keypoint R-CNN file finds its own persons
    (no `boxes`), scored as torchvision scores them. Every image of the split counts, with or without
    persons found. Writes the COCO keypoint results when asked.
    """
    import json

    from jobs.models import ModelError, is_keypoint_rcnn, load_keypoint_rcnn_file, load_pose_model
    from pose.images import decode_image
    from pose.joints import PERSON_CATEGORY
    from pose.metrics import coco_keypoint_ap
    from pose.models.keypoint_rcnn import PERSON_LABEL, detect_with_keypoints
    from pose.topdown import TopDownPredictor

    # The model first: a wrong --model is one line before any data is read.
    if is_keypoint_rcnn(model_spec, options):
        if boxes is not None:
            raise ModelError(
                f"{model_spec}: a torchvision Keypoint R-CNN finds its own persons; leave out --boxes and --detector"
            )
        model = load_keypoint_rcnn_file(model_spec, options, getattr(overrides, "arch", None))
        name = f"torchvision keypointrcnn_resnet50_fpn ({model.variant})"

        def persons(pixels: np.ndarray, _) -> dict:  # its own boxes, keypoints and person scores
            found = detect_with_keypoints(model, [pixels])[0]
            people = found["labels"] == PERSON_LABEL
            return {
                "keypoints": found["keypoints"][people],
                "scores": found["scores"][people],
                "kept": np.arange(int(people.sum())),
            }
    else:
        predictor = TopDownPredictor(load_pose_model(model_spec, options, overrides), flip_test=flip_test)
        name = predictor.model.name
        boxes = _ground_truth_boxes(data, split, options) if boxes is None else boxes

        def persons(pixels: np.ndarray, image_id: int) -> dict | None:
            given, scores = boxes.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
            usable = (given[:, 2] >= 1) & (given[:, 3] >= 1)
            return predictor(pixels, given[usable], scores[usable]) if usable.any() else None

    truth = keypoint_ground_truth(data, split, options)
    images = read_table(data, "images", (split,), options, columns=["image_id", "source"]).sort_by("image_id")
    results, instances = [], 0
    for image_id, source in zip(images["image_id"].to_pylist(), images["source"].to_pylist()):
        if boxes is not None and not len(boxes.get(int(image_id), ((), ()))[0]):
            continue  # no person to look at: the image still counts, with its persons missed
        # COCO's annotations are in the stored pixel frame: no EXIF rotation, as in ingest.
        found = persons(decode_image(read_image_source(source, options), exif_transpose=False), int(image_id))
        if found is None:
            continue
        instances += len(found["keypoints"])
        for k in found["kept"]:
            keypoints = [round(float(v), 3) for v in found["keypoints"][k].reshape(-1)]
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": PERSON_CATEGORY["id"],
                    "keypoints": keypoints,
                    "score": float(found["scores"][k]),
                }
            )
    figures = {
        **coco_keypoint_ap(truth, results, image_ids=sorted(images["image_id"].to_pylist())),
        "instances": instances,
        "model": name,
    }
    if results_file:
        write_bytes_atomic(results_file, json.dumps(results).encode(), options)
        figures["results"] = results_file
    return figures


# ------------------------------------------------------------------------------------------------
# Where the person boxes of a top-down keypoint evaluation come from when they are not the ground
# truth's: a COCO box results file, or a detector run over the split.


class BoxesFileError(UserError):
    """A --boxes file that is not a COCO box results list."""


def given_person_boxes(
    data: str,
    split: str,
    options: StorageOptions,
    *,
    boxes: str | None = None,
    detector: str | None = None,
    detector_arch: str | None = None,
) -> tuple[dict | None, dict]:
    """Person boxes per image id (`jobs.annotate.boxes_by_image`) from the COCO box results file
    `boxes`, or from `detector` (a train-detector run folder or a .pth file, `detector_arch` naming
    a bare file's architecture) run over `split` of the ingested COCO `data`; None for neither (the
    ground truth's boxes). Also the detector's box AP, AP50 and AR as {"box_ap", ...} ({} for a file)."""
    from jobs.annotate import boxes_by_image

    if boxes:
        return boxes_by_image(read_box_results(boxes, options)), {}
    if detector:
        from jobs.models import load_detector

        found, _ = detect_split(load_detector(detector, options, detector_arch), data, split, options)
        figures = {f"box_{k}": v for k, v in found.result().items() if k in ("ap", "ap50", "ar")}
        return boxes_by_image(found.results), figures
    return None, {}


def read_box_results(url: str, options: StorageOptions) -> list[dict]:
    """A COCO box results file: a JSON list of {image_id, category_id, bbox, score}."""
    try:
        entries = json.loads(read_bytes(url, options))
    except ValueError:
        raise BoxesFileError(f"{url}: not a JSON file") from None
    if not isinstance(entries, list) or not all(
        isinstance(r, dict) and {"image_id", "bbox"} <= set(r) for r in entries
    ):
        raise BoxesFileError(f"{url}: expected a COCO box results list [{{image_id, category_id, bbox, score}}, ...]")
    return entries
