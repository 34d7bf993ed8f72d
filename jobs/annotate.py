"""Annotate: every object and every person's 17 keypoints in a bucket of images, into Parquet and
COCO results files.

The driver lists SRC (a folder or s3:// prefix of images, or an ingested `images` table) in a
fixed order and cuts the list into shards. Ray Data then streams the images of the shards still
to do through three stages, one row per image all the way:

  read_images      tasks        bytes -> RGB pixels (EXIF orientation applied), or an error
  Detector         actor pool   batches of images -> every object the detector reports; each
                                person box cut to the keypoint model's input by its affine
  KeypointModel    actor pool   batches of persons across images -> 17 joints, flip test

(on CPUs one pool of actors, `DetectorAndKeypoints`, does all three: see `plan_resources`;
with `--boxes` the rows carry their persons' boxes and `given_boxes` stands for the detector; a
torchvision Keypoint R-CNN as the keypoint model is `KeypointDetector`, with no keypoint stage),
and back to the driver, which gathers the rows of each shard and, once a shard is complete,
writes its Parquet files and then its commit marker:

  DST/annotations/<shard>.parquet   one row per annotated image (pose.schema.ANNOTATIONS)
  DST/errors/<shard>.parquet        one row per image that could not be annotated, and why
  DST/_commits/<shard>.json         written last: the shard is done
  DST/results/keypoints.json        COCO keypoint results (pycocotools' COCO.loadRes)
  DST/results/boxes.json            COCO box results, every class
  DST/pictures/<image_id>.png       with --visualize N
  DST/manifest.json                 written at the end: counts, files, settings

A re-run skips the shards whose marker matches (same images, same models and settings), so a
killed run resumes where it stopped and a finished one is not redone; every file is written whole
(rename locally, one PUT on S3), so no half file is ever visible under its final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from jobs import shards
from jobs.datasets import is_ingested, read_image_source, read_manifest, read_table
from jobs.runtime import Progress, StallWatch, alive_node_cpus, cpu_share, init_ray
from jobs.storage import (
    StorageError,
    StorageOptions,
    absolute,
    check_readable,
    check_writable,
    exists,
    filesystem,
    is_s3,
    join,
    list_files,
    open_input,
    open_output_atomic,
    read_bytes,
    remove_stale_temporaries,
    write_bytes_atomic,
)
from pose import schema
from pose.errors import UserError
from pose.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError, decode_image, encode_png
from pose.joints import NUM_JOINTS, PERSON_CATEGORY

SHARD_IMAGES = 64
RESULTS_KEYPOINTS = "results/keypoints.json"
RESULTS_BOXES = "results/boxes.json"
IN_FLIGHT_BYTES = 512 * 2**20  # the pipeline's data in Ray's object store, at most
MAX_BLOCKS = 20_000  # input blocks of one run: past this, blocks hold more than one detector batch
# oneDNN (torch's CPU convolutions) keeps each kernel it builds, per layer and input shape, up to
# 1,024 of them. The detector sees many image sizes and the keypoint model many person counts, so
# an actor's memory would grow with every new shape; 16 kept bounds it, and building a kernel is
# cheap next to running it. Read once, when a process builds its first kernel; a value set by the
# user wins.
ONEDNN_CACHE_ENTRIES = "16"


class AnnotateError(UserError):
    """A user mistake found before any work starts (no images at SRC, ...): one line, no traceback."""


@dataclass(frozen=True)
class AnnotateSettings:
    """What to run and how. The fields marked (result) change what is written and are part of each
    shard's fingerprint; the others only change speed."""

    detector: (
        str | None
    )  # a train-detector run folder or a torchvision .pth file, local or s3://; None with `boxes` (result)
    keypoints: str  # a train-keypoints run folder or a published checkpoint file, local or s3:// (result)
    detector_arch: str | None = None  # architecture of a bare .pth file (result)
    keypoint_arch: str | None = None  # what a published keypoint file holds, when its name does not say (result)
    input_size: tuple[int, int] | None = None  # (w, h) of a published heatmap model's input (result)
    codec: str | None = None  # msra | dark | udp | simcc, for a published file (result)
    boxes: str | None = None  # COCO box results JSON: person boxes instead of a detector (result)
    box_threshold: float = 0.0  # given boxes scoring less get no keypoints (result)
    person_threshold: float = 0.3  # person boxes scoring less get no keypoints (result)
    max_persons: int = 20  # per image, best boxes first (result)
    flip_test: bool = True  # (result)
    nms_threshold: float = 0.9  # OKS-NMS between an image's persons, as Simple Baselines (result)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images declaring more are refused before decoding (result)
    shard_images: int = SHARD_IMAGES  # images per shard: the unit of resumption (result)
    detector_batch: int | None = None  # images per detector call (default: 2 on CPU, 8 on GPU)
    keypoint_batch: int | None = None  # persons per keypoint model call (default: 32 on CPU, 128 on GPU)
    detector_actors: int | None = None  # default: from the cluster's CPUs or GPUs
    keypoint_actors: int | None = None
    use_gpu: bool | None = None  # default: when the cluster has GPUs
    precision: str = "auto"  # auto | bf16 | fp32, the models' arithmetic (`pose.precision.inference_precision`)

    def result_settings(self) -> dict:
        keys = (
            "detector",
            "keypoints",
            "detector_arch",
            "keypoint_arch",
            "input_size",
            "codec",
            "boxes",
            "box_threshold",
            "person_threshold",
            "max_persons",
            "flip_test",
            "nms_threshold",
            "max_pixels",
            "shard_images",
        )
        return {key: getattr(self, key) for key in keys}

    def overrides(self):
        """What the user said about a published keypoint file (`pose.checkpoints.Overrides`)."""
        from pose.checkpoints import Overrides

        return Overrides(self.keypoint_arch, tuple(self.input_size) if self.input_size else None, self.codec)


@dataclass
class Shard:
    unit: str  # "00042": the shard's file names under DST
    items: list[dict]  # {"image_id", "source", "split"} in listing order
    fingerprint: str = ""


@dataclass
class Plan:
    source: str
    ingested: bool  # SRC is an ingested `images` table (COCO pixel frame: no EXIF rotation)
    shards: list[Shard] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(len(shard.items) for shard in self.shards)


# --------------------------------------------------------------------------------------------
# Planning (driver)


def image_ids(paths: list[str], root: str) -> list[int]:
    """Image ids for listed files, stable across runs.

    COCO's file names are their image ids (`000000000139.jpg` is image 139): a file whose name is
    a number no other listed file shares gets that number, so that the results files match COCO
    ground truth. Any other file gets the first 48 bits of the SHA-256 of its path relative to SRC
    (stable as other files come and go), or the next free number on the rare clash.
    """
    stems = [posixpath.splitext(posixpath.basename(path.replace(os.sep, "/")))[0] for path in paths]
    numbers = [int(stem) if stem.isdigit() else None for stem in stems]
    shared = {n for n, times in Counter(numbers).items() if n is not None and times > 1}
    ids: list[int | None] = [n if n is not None and n not in shared else None for n in numbers]
    taken = {n for n in ids if n is not None}
    for i, path in enumerate(paths):
        if ids[i] is None:
            relative = path[len(root) :].replace(os.sep, "/").lstrip("/")
            image_id = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:6], "big")
            while image_id in taken:
                image_id += 1
            taken.add(image_id)
            ids[i] = image_id
    return ids


def plan_annotate(src: str, dest: str, options: StorageOptions, shard_images: int = SHARD_IMAGES) -> Plan:
    """List SRC in a fixed order (an ingested table by split and image id, files by path) and cut
    it into shards of `shard_images`. Files under DST are left out, so DST may lie inside SRC."""
    ingested = is_ingested(src, options)
    if ingested:
        files = read_manifest(src, options).get("tables", {}).get("images", {}).get("files", [])
        if not files:
            raise AnnotateError(
                f"{src}: an ingested dataset without an images table "
                "(annotate reads `pose-jobs ingest coco` output or a folder of images)"
            )
        splits = tuple(sorted({name.split("/")[1] for name in files}))
        table = read_table(src, "images", splits, options, columns=["image_id", "split", "source"]).sort_by(
            [("split", "ascending"), ("image_id", "ascending")]
        )
        items = [
            {"image_id": int(r["image_id"]), "source": r["source"], "split": r["split"]} for r in table.to_pylist()
        ]
    else:
        inside = dest.rstrip("/") + ("/" if is_s3(dest) else os.sep)
        paths = [p for p in list_files(src, options, suffixes=IMAGE_SUFFIXES) if not p.startswith(inside)]
        if not paths:
            raise AnnotateError(
                f"{src}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} in any case, in every sub-folder)"
            )
        items = [{"image_id": i, "source": p, "split": None} for i, p in zip(image_ids(paths, src.rstrip("/")), paths)]
    plan = Plan(src, ingested)
    for number, start in enumerate(range(0, len(items), shard_images)):
        plan.shards.append(Shard(f"{number:05d}", items[start : start + shard_images]))
    return plan


def read_box_results(url: str, options: StorageOptions) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Person boxes by image id from a COCO box results JSON file (`boxes_by_image`); a file that
    is missing or not such a list is an AnnotateError."""
    if not exists(url, options):
        raise AnnotateError(f"{url}: no such boxes file (expected a COCO box results JSON)")
    try:
        return boxes_by_image(json.loads(read_bytes(url, options)))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise AnnotateError(
            f"{url}: not a COCO box results file ({type(error).__name__}: {error}); expected a JSON list of "
            "{image_id, category_id, bbox [x, y, w, h], score}"
        ) from None


def boxes_by_image(entries: list[dict]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """COCO box results (a list of {image_id, category_id, bbox [x, y, w, h], score}; COCO's
    published person detections, or `results/boxes.json` of an earlier run) -> per image id the
    person boxes (M, 4) float64 and scores (M,) float64, best first (ties in file order). Other
    categories are skipped; a missing score counts as 1."""
    by_image: dict[int, tuple[list, list]] = {}
    for entry in entries:
        if int(entry.get("category_id", PERSON_CATEGORY["id"])) != PERSON_CATEGORY["id"]:
            continue
        boxes, scores = by_image.setdefault(int(entry["image_id"]), ([], []))
        boxes.append([float(v) for v in entry["bbox"]][:4])
        scores.append(float(entry.get("score", 1.0)))
    best_first = {i: np.argsort(-np.asarray(s, np.float64), kind="stable") for i, (_, s) in by_image.items()}
    return {
        i: (np.asarray(b, np.float64).reshape(-1, 4)[best_first[i]], np.asarray(s, np.float64)[best_first[i]])
        for i, (b, s) in by_image.items()
    }


def model_identity(spec: str, options: StorageOptions) -> dict:
    """What names a model's content cheaply: its files' sizes and modification times (ETags on S3),
    so that retraining into the same folder re-annotates instead of keeping stale results."""
    files = [join(spec, "model.json"), join(spec, "model.pt")] if exists(join(spec, "model.json"), options) else [spec]
    identity = {}
    for url in files:
        fs, path = filesystem(url, options)
        info = fs.info(path)
        identity[url] = [info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))]
    return identity


# --------------------------------------------------------------------------------------------
# The stages: plain functions and classes of a batch (a dict of numpy columns, one row per image)
#
# Rows carry `image_id`, `source`, `split` and `unit` (the shard) from the start; `error_stage` and
# `error_reason` ("" while all is well) once an image fails, after which later stages pass it on.
# Pixels and arrays travel as raw bytes with their shapes, which every Ray version stores as is.


def _column(batch: dict, name: str, count: int, fill) -> np.ndarray:
    return np.asarray(batch[name], dtype=object) if name in batch else np.full(count, fill, dtype=object)


def read_images(
    batch: dict, options: StorageOptions, exif_transpose: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict:
    """Read and decode each row's `source`: adds `pixels` ((H, W, 3) uint8 as bytes), `width`,
    `height`, `error_stage` and `error_reason`."""
    count = len(batch["source"])
    pixels, widths, heights = np.empty(count, object), np.zeros(count, np.int32), np.zeros(count, np.int32)
    stages, reasons = np.full(count, "", object), np.full(count, "", object)
    for i, source in enumerate(batch["source"]):
        pixels[i] = b""
        try:
            data = read_image_source(str(source), options)
        except (OSError, StorageError) as error:
            stages[i], reasons[i] = "read", f"cannot read the file ({error})"
            continue
        try:
            image = decode_image(data, exif_transpose=exif_transpose, max_pixels=max_pixels)
        except ImageDecodeError as error:
            stages[i], reasons[i] = "decode", str(error)
            continue
        heights[i], widths[i] = image.shape[:2]
        pixels[i] = image.tobytes()
    return {
        **batch,
        "pixels": pixels,
        "width": widths,
        "height": heights,
        "error_stage": stages,
        "error_reason": reasons,
    }


def _image(batch: dict, i: int) -> np.ndarray:
    return np.frombuffer(batch["pixels"][i], np.uint8).reshape(int(batch["height"][i]), int(batch["width"][i]), 3)


def _failed(batch: dict, i: int) -> bool:
    return bool(batch["error_stage"][i])


def bound_kernel_cache() -> None:
    """Cap oneDNN's kernel cache in this process (`ONEDNN_CACHE_ENTRIES`) unless the environment
    sets it; call before the process runs its first convolution."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)


def _torch_device(use_gpu: bool):
    import torch

    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class PersonCrops:
    """Which detections get keypoints and how they are cut: the keypoint model's crop convention
    (`pose.topdown.CropConvention`), and the person score threshold and count limit."""

    crop: object  # pose.topdown.CropConvention
    threshold: float
    limit: int


class Detector:
    """The detector on one actor: `__call__` adds each image's detections, `det_boxes` ((M, 4)
    float32 COCO [x, y, w, h]), `det_scores` ((M,) float32) and `det_labels` ((M,) int64), best
    first, then cuts the persons' keypoint-model inputs (`person_inputs`) and drops the pixels, so
    that only the small person inputs travel on. A batch that fails (an image too large for the
    GPU, ...) is retried image by image; an image that still fails becomes an error of stage
    "detect"."""

    def __init__(
        self,
        spec: str,
        options: StorageOptions,
        crops: PersonCrops,
        arch: str | None = None,
        use_gpu: bool = False,
        threads: int = 1,
        precision: str = "auto",
    ):
        import torch

        from pose.precision import inference_precision

        bound_kernel_cache()
        torch.set_num_threads(threads)
        self.device = _torch_device(use_gpu)
        self.precision = inference_precision(self.device, precision)
        self.model = self.precision.prepare(self.load(spec, options, arch).to(self.device))
        self.crops = crops

    with_keypoints = False  # a Keypoint R-CNN: the keypoints too, from the same model

    def load(self, spec: str, options: StorageOptions, arch: str | None):
        from jobs.models import load_detector, load_keypoint_rcnn_file

        return (load_keypoint_rcnn_file if self.with_keypoints else load_detector)(spec, options, arch)

    def detect(self, images: list) -> list[dict]:
        from pose.models.detector import detect
        from pose.models.keypoint_rcnn import detect_with_keypoints

        with self.precision.autocast(self.device):
            return (detect_with_keypoints if self.with_keypoints else detect)(self.model, images, self.device)

    def persons(self, batch: dict, found: dict[int, dict]) -> dict:
        """What follows detection: the person inputs for the keypoint model."""
        return person_inputs(batch, self.crops)

    def __call__(self, batch: dict) -> dict:
        count = len(batch["source"])
        boxes, scores, labels = (np.full(count, b"", dtype=object) for _ in range(3))
        stages, reasons = np.array(batch["error_stage"], dtype=object), np.array(batch["error_reason"], dtype=object)
        good = [i for i in range(count) if not _failed(batch, i)]
        try:
            # Copies: torch wants writable arrays, and the batch's buffers are read-only.
            found = dict(zip(good, self.detect([_image(batch, i).copy() for i in good])))
        except Exception:  # noqa: BLE001 - one bad image must not cost the batch
            found = {}
            for i in good:
                try:
                    found[i] = self.detect([_image(batch, i).copy()])[0]
                except Exception as error:  # noqa: BLE001
                    stages[i], reasons[i] = "detect", f"{type(error).__name__}: {error}"
        for i, detections in found.items():
            boxes[i] = detections["boxes"].astype(np.float32).tobytes()
            scores[i] = detections["scores"].astype(np.float32).tobytes()
            labels[i] = detections["labels"].astype(np.int64).tobytes()
        batch = {
            **batch,
            "det_boxes": boxes,
            "det_scores": scores,
            "det_labels": labels,
            "error_stage": stages,
            "error_reason": reasons,
        }
        return self.persons(batch, found)


class KeypointDetector(Detector):
    """torchvision's Keypoint R-CNN on one actor: detections as `Detector` gives them, and the
    keypoints of each chosen person box from the same model (`person_rows`, `person_keypoints`,
    `person_scores`: the box score, its own person score, no rescoring), with no keypoint stage
    after it."""

    with_keypoints = True

    def persons(self, batch: dict, found: dict[int, dict]) -> dict:
        from pose.models.detector import person_boxes

        count = len(batch["source"])
        rows, keypoints, scores = (np.full(count, b"", dtype=object) for _ in range(3))
        for i, detections in found.items():
            chosen = person_boxes(
                detections["boxes"], detections["scores"], detections["labels"], self.crops.threshold, self.crops.limit
            )
            rows[i] = chosen.astype(np.int32).tobytes()
            keypoints[i] = detections["keypoints"][chosen].astype(np.float32).tobytes()
            scores[i] = detections["scores"][chosen].astype(np.float64).tobytes()
        out = {k: v for k, v in batch.items() if k != "pixels"}
        return {**out, "person_rows": rows, "person_keypoints": keypoints, "person_scores": scores}


def given_boxes(batch: dict, crops: PersonCrops) -> dict:
    """The detector's stage with `--boxes`: each row's given person boxes (`given_boxes` (M, 4)
    float64 COCO [x, y, w, h] and `given_scores` (M,), best first, set by the driver from the file
    by `boxes_by_image`) become its detections, then `person_inputs`."""
    count = len(batch["source"])
    boxes, scores, labels = (np.full(count, b"", dtype=object) for _ in range(3))
    for i in range(count):
        given_scores = np.frombuffer(batch["given_scores"][i], np.float64)
        boxes[i] = np.frombuffer(batch["given_boxes"][i], np.float64).astype(np.float32).tobytes()
        scores[i] = given_scores.astype(np.float32).tobytes()
        labels[i] = np.full(len(given_scores), PERSON_CATEGORY["id"], np.int64).tobytes()
    rest = {k: v for k, v in batch.items() if k not in ("given_boxes", "given_scores")}
    return person_inputs({**rest, "det_boxes": boxes, "det_scores": scores, "det_labels": labels}, crops)


def person_inputs(batch: dict, crops: PersonCrops) -> dict:
    """Cut each chosen person box (`person_boxes`) to the keypoint model's input as its framework
    cuts it (`pose.topdown.cut_crops`). Adds `person_rows` ((P,) int32: which detections),
    `person_inputs` ((P, h, w, 3) uint8), `person_affines` ((P, 2, 3) float64, input -> image
    pixels) and `person_areas` ((P,) float64, the padded boxes' areas, for OKS-NMS); drops the
    pixels."""
    from pose.models.detector import person_boxes
    from pose.topdown import cut_crops

    count = len(batch["source"])
    rows, inputs, affines, areas = (np.full(count, b"", dtype=object) for _ in range(4))
    for i in range(count):
        if _failed(batch, i):
            continue
        boxes = np.frombuffer(batch["det_boxes"][i], np.float32).reshape(-1, 4)
        scores, labels = (
            np.frombuffer(batch["det_scores"][i], np.float32),
            np.frombuffer(batch["det_labels"][i], np.int64),
        )
        chosen = person_boxes(boxes, scores, labels, crops.threshold, crops.limit)
        pixels, matrices, padded = cut_crops(_image(batch, i), boxes[chosen], crops.crop)
        rows[i] = chosen.astype(np.int32).tobytes()
        inputs[i], affines[i], areas[i] = pixels.tobytes(), matrices.tobytes(), padded.tobytes()
    out = {k: v for k, v in batch.items() if k != "pixels"}
    return {**out, "person_rows": rows, "person_inputs": inputs, "person_affines": affines, "person_areas": areas}


class KeypointModel:
    """The keypoint model on one actor: the persons of every image in the batch go through the
    model together, `batch_size` at a time, with flip test; adds `person_keypoints` ((P, 17, 3)
    float32: x, y in image pixels and the joint's confidence) and drops the inputs."""

    def __init__(
        self,
        spec: str,
        options: StorageOptions,
        flip_test: bool = True,
        batch_size: int = 32,
        use_gpu: bool = False,
        threads: int = 1,
        precision: str = "auto",
        overrides=None,
    ):
        import torch

        from jobs.models import load_pose_model
        from pose.precision import inference_precision
        from pose.topdown import TopDownPredictor

        bound_kernel_cache()
        torch.set_num_threads(threads)
        device = _torch_device(use_gpu)
        self.predictor = TopDownPredictor(
            load_pose_model(spec, options, overrides),
            device=device,
            precision=inference_precision(device, precision),
            flip_test=flip_test,
            batch_size=batch_size,
        )

    def __call__(self, batch: dict) -> dict:
        width, height = self.predictor.crop.input_size
        count = len(batch["source"])
        inputs = [
            np.frombuffer(batch["person_inputs"][i], np.uint8).reshape(-1, height, width, 3) for i in range(count)
        ]
        affines = [np.frombuffer(batch["person_affines"][i], np.float64).reshape(-1, 2, 3) for i in range(count)]
        persons = np.concatenate(inputs) if inputs else np.zeros((0, height, width, 3), np.uint8)
        matrices = np.concatenate(affines) if affines else np.zeros((0, 2, 3))
        keypoints = self.predictor.keypoints(persons, matrices)
        output = np.empty(count, dtype=object)
        offset = 0
        for i in range(count):
            output[i] = keypoints[offset : offset + len(inputs[i])].tobytes()
            offset += len(inputs[i])
        out = {k: v for k, v in batch.items() if k not in ("person_inputs", "person_affines")}
        return {**out, "person_keypoints": output}


class DetectorAndKeypoints:
    """The whole pipeline on one actor (the CPU plan, `Resources.combined`): each batch's images are
    read and decoded (`read`: `read_images`' keyword arguments), go through the detector and then,
    their persons together, through the keypoint model."""

    def __init__(self, detector: dict | None, keypoints: dict | None, read: dict, crops: PersonCrops):
        # detector None: the rows carry given boxes; keypoints None: the detector is a Keypoint R-CNN.
        self.detector = (
            (Detector if keypoints is not None else KeypointDetector)(**detector) if detector is not None else None
        )
        self.keypoints = KeypointModel(**keypoints) if keypoints is not None else None
        self.read, self.crops = read, crops

    def __call__(self, batch: dict) -> dict:
        batch = read_images(batch, **self.read)
        batch = self.detector(batch) if self.detector is not None else given_boxes(batch, self.crops)
        return self.keypoints(batch) if self.keypoints is not None else batch


# --------------------------------------------------------------------------------------------
# Rows (driver): a pipeline row -> an `annotations` row or an `errors` row


def annotation_row(row: dict, category_names: tuple[str, ...], nms_threshold: float = 0.9) -> dict:
    """The `annotations` row (pose.schema.ANNOTATIONS) of a pipeline row that got through.

    Persons are rescored and OKS-NMS'd within the image as the COCO protocol does
    (`pose.topdown.rescore_and_suppress`), best first."""
    from pose.topdown import rescore_and_suppress

    boxes = np.frombuffer(row["det_boxes"], np.float32).reshape(-1, 4)
    scores = np.frombuffer(row["det_scores"], np.float32)
    labels = np.frombuffer(row["det_labels"], np.int64)
    detections = [
        {
            "bbox": box.tolist(),
            "category_id": int(label),
            "category": category_names[label] if 0 <= label < len(category_names) else f"class {label}",
            "score": float(score),
        }
        for box, score, label in zip(boxes, scores, labels)
    ]
    rows = np.frombuffer(row["person_rows"], np.int32)
    keypoints = np.frombuffer(row["person_keypoints"], np.float32).reshape(-1, NUM_JOINTS, 3)
    if "person_scores" in row:  # a Keypoint R-CNN: its own person scores, no rescoring or OKS-NMS
        person_scores = np.frombuffer(row["person_scores"], np.float64)
        kept = np.argsort(-person_scores, kind="stable")
    else:
        areas = np.frombuffer(row["person_areas"], np.float64)
        kept, person_scores = rescore_and_suppress(keypoints, scores[rows], areas, nms_threshold=nms_threshold)
    persons = [
        {
            "bbox": boxes[rows[k]].tolist(),
            "box_score": float(scores[rows[k]]),
            "keypoints": keypoints[k].reshape(-1).tolist(),
            "score": float(person_scores[k]),
        }
        for k in kept
    ]
    return {
        "image_id": int(row["image_id"]),
        "source": str(row["source"]),
        "split": row["split"] or None,
        "width": int(row["width"]),
        "height": int(row["height"]),
        "detections": detections,
        "persons": persons,
    }


def error_row(row: dict) -> dict:
    """The `errors` row of a pipeline row that failed (pose.schema.ERRORS)."""
    return schema.error_row(
        row["split"] or None,
        "image",
        f"image {int(row['image_id'])}",
        str(row["source"]),
        str(row["error_stage"]),
        str(row["error_reason"]),
    )


def keypoint_results(annotations: pa.Table):
    """COCO keypoint results entries (image_id, category_id 1, keypoints 17 x (x, y, c), score)."""
    for row in annotations.select(["image_id", "persons"]).to_pylist():
        for person in row["persons"]:
            keypoints = [round(float(v), 2) for v in person["keypoints"]]
            yield {
                "image_id": row["image_id"],
                "category_id": PERSON_CATEGORY["id"],
                "keypoints": keypoints,
                "score": round(float(person["score"]), 5),
            }


def box_results(annotations: pa.Table):
    """COCO box results entries (image_id, category_id, bbox [x, y, w, h], score), every class."""
    for row in annotations.select(["image_id", "detections"]).to_pylist():
        for detection in row["detections"]:
            bbox = [round(float(v), 2) for v in detection["bbox"]]
            yield {
                "image_id": row["image_id"],
                "category_id": detection["category_id"],
                "bbox": bbox,
                "score": round(float(detection["score"]), 5),
            }


# --------------------------------------------------------------------------------------------
# Running (driver)


@dataclass(frozen=True)
class Resources:
    """How the two model stages are spread over the cluster."""

    use_gpu: bool
    detector_actors: int  # with `combined`: the actors that run both models
    keypoint_actors: int  # 0 with `combined`
    detector_batch: int
    keypoint_batch: int
    actor_cpus: float  # Ray CPUs reserved per actor (one torch thread each on CPU)
    actor_gpus: float
    task_cpus: float  # per read task (without `combined`: there the actors read)
    read_tasks: int  # read tasks at a time

    @property
    def combined(self) -> bool:
        """One pool whose actors run the detector and then the keypoint model on each batch."""
        return self.keypoint_actors == 0


def plan_resources(
    settings: AnnotateSettings, cpus: float, gpus: float, node_cpus: list[float] | None = None
) -> Resources:
    """Pools and batches for a cluster of `cpus` CPUs and `gpus` GPUs, unless set in `settings`.

    On GPUs each GPU holds one detector and one keypoint actor (half a GPU each), the keypoint
    model batched across the images of many detector calls. On CPUs (unless `keypoint_actors` is
    set) one pool of actors runs both models, one actor per core on one torch thread each: the
    keypoint model costs a tenth of the detector there, and a pool of its own would hold a thread
    that competes with the detectors for the cores (`benchmarks/annotate.py` times both plans).
    That pool's actors also read and decode their images. Actors reserve just under the cluster's
    CPUs between them, leaving a reading task's CPUs free on some node wherever Ray places them
    (`node_cpus`, the CPUs of each node; default one node of `cpus`), so that reading tasks and Ray
    Data's own small tasks always find room (Ray would otherwise wait forever for a CPU)."""
    use_gpu = gpus > 0 if settings.use_gpu is None else settings.use_gpu
    if use_gpu and gpus <= 0:
        raise AnnotateError("--gpu asked for, but the Ray cluster has no GPUs (leave it out to run on CPUs)")
    if use_gpu:
        detector_actors = settings.detector_actors or max(1, int(gpus))
        keypoint_actors = settings.keypoint_actors or max(1, int(gpus))
        actor_gpus = min(0.5, gpus / (detector_actors + keypoint_actors)) if gpus else 0.5
        return Resources(
            True,
            detector_actors,
            keypoint_actors,
            settings.detector_batch or 8,
            settings.keypoint_batch or 128,
            min(1.0, cpus / 4),
            actor_gpus,
            0.25,
            max(2, int(cpus) // 2),
        )
    keypoint_actors = settings.keypoint_actors or 0  # 0: the detector actors run both models
    detector_actors = settings.detector_actors or max(1, round(cpus) - keypoint_actors)
    task_cpus = 0.25
    actor_cpus = max(0.05, cpu_share(detector_actors + keypoint_actors, node_cpus or [cpus], spare=0.5, keep=task_cpus))
    return Resources(
        False,
        detector_actors,
        keypoint_actors,
        settings.detector_batch or 2,
        settings.keypoint_batch or 32,
        actor_cpus,
        0.0,
        task_cpus,
        2,
    )


def run_annotate(
    plan: Plan,
    dest: str,
    options: StorageOptions,
    settings: AnnotateSettings,
    *,
    visualize: int = 0,
    address: str | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> dict:
    """Annotate the plan's shards that are not yet committed in DST; then the results files,
    pictures and `manifest.json`. Returns the manifest."""
    from jobs.models import is_keypoint_rcnn, load_detector, load_keypoint_rcnn_file, load_pose_model
    from pose.models.detector import PERSON_CATEGORY_NAMES

    check_writable(dest, options)
    remove_stale_temporaries(dest)  # a killed run's half-written files (never under a final name)
    # Both models are loaded here once, so that a wrong --detector or --keypoints is one line now
    # rather than an actor's traceback later; the actors load their own copies.
    rcnn = is_keypoint_rcnn(settings.keypoints, options)
    if rcnn:
        if settings.boxes is not None or settings.detector is not None:
            raise AnnotateError(
                f"{settings.keypoints}: a torchvision Keypoint R-CNN finds its own persons; "
                "leave out --detector and --boxes"
            )
        load_keypoint_rcnn_file(settings.keypoints, options, settings.keypoint_arch)
        category_names = PERSON_CATEGORY_NAMES
    elif (settings.boxes is None) == (settings.detector is None):
        raise AnnotateError(
            "give either --detector (a model finds the persons) or --boxes (a COCO box results file), "
            "not both or neither"
        )
    elif settings.boxes is None:
        detector = load_detector(settings.detector, options, settings.detector_arch)
        category_names = detector.config.category_names()
        del detector
    else:
        category_names = PERSON_CATEGORY_NAMES
        given = read_box_results(settings.boxes, options)
        for shard in plan.shards:
            for item in shard.items:
                boxes, scores = given.get(item["image_id"], (np.zeros((0, 4)), np.zeros(0)))
                item["given_boxes"], item["given_scores"] = boxes.tobytes(), scores.tobytes()
    crop = None if rcnn else load_pose_model(settings.keypoints, options, settings.overrides()).crop

    fingerprinted = {
        **settings.result_settings(),
        "exif_transpose": not plan.ingested,
        "detector_identity": model_identity(settings.detector or settings.boxes or settings.keypoints, options),
        "keypoints_identity": model_identity(settings.keypoints, options),
        "schema_version": schema.SCHEMA_VERSION,
    }
    for shard in plan.shards:
        shard.fingerprint = shards.fingerprint({"unit": shard.unit, "items": shard.items, "settings": fingerprinted})
    committed = shards.read_commit_markers(dest, options)
    pending = shards.pending(plan.shards, committed)

    if pending:
        init_ray(address, verbose=verbose)
        import ray

        resources = plan_resources(
            settings, ray.cluster_resources().get("CPU", 1), ray.cluster_resources().get("GPU", 0), alive_node_cpus()
        )
        meter = Progress("annotate", len(pending), "images") if progress else None
        with StallWatch("annotate", lambda: len(committed)):
            for marker in _stream(
                pending, dest, options, settings, resources, crop, category_names, not plan.ingested, verbose
            ):
                committed[marker["unit"]] = marker
                if meter:
                    meter.advance(1, marker["images"])

    markers = {s.unit: committed[s.unit] for s in plan.shards}
    results = _write_results(dest, options, markers)
    pictures = (
        draw_pictures(dest, options, markers, category_names, visualize, exif_transpose=not plan.ingested)
        if visualize
        else []
    )
    annotated = sum(markers[unit]["tables"]["annotations"]["rows"] for unit in markers)
    failed = sum(markers[unit]["tables"]["errors"]["rows"] for unit in markers)
    manifest = shards.write_manifest(
        dest,
        options,
        job="annotate",
        source=plan.source,
        settings=fingerprinted,
        markers=markers,
        results={name: {"entries": n} for name, n in results.items()},
        pictures=pictures,
        images={
            "listed": plan.images,
            "annotated": annotated,
            "errors": failed,
            "balanced": annotated + failed == plan.images,
        },
    )
    images = manifest["images"]
    if not images["balanced"]:
        raise shards.UnbalancedError(
            f"{dest}/manifest.json does not balance: {images['listed']} images listed, "
            f"{images['annotated']} annotated and {images['errors']} in errors"
        )
    return manifest


def _stream(
    pending, dest, options, settings, resources: Resources, crop, category_names, exif_transpose: bool, verbose: bool
):
    """Run the pipeline over the pending shards; yield each shard's marker once it is written."""
    import ray.data

    if not verbose:
        # Ray Data's advice for small inputs (fewer blocks than actors) is noise here.
        warnings.filterwarnings("ignore", message=r".*only received \d+ input", category=UserWarning)
    # However large SRC is, Ray Data holds at most this much of the pipeline's data at a time
    # (decoded pixels waiting for a detector, mostly): reading stops while the models catch up.
    context = ray.data.DataContext.get_current()
    context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=IN_FLIGHT_BYTES
    )
    items = [{**item, "split": item["split"] or "", "unit": shard.unit} for shard in pending for item in shard.items]
    expected = {shard.unit: len(shard.items) for shard in pending}
    fingerprints = {shard.unit: shard.fingerprint for shard in pending}
    # Blocks of one detector batch (bigger only past MAX_BLOCKS), so that every actor gets work
    # and the first batches reach the models early. The order of the rows does not matter: the
    # driver gathers them by shard.
    per_block = max(resources.detector_batch, -(-len(items) // MAX_BLOCKS))
    dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_block))
    read = {"options": options, "exif_transpose": exif_transpose, "max_pixels": settings.max_pixels}
    keypoints = {
        "spec": settings.keypoints,
        "options": options,
        "flip_test": settings.flip_test,
        "batch_size": resources.keypoint_batch,
        "use_gpu": resources.use_gpu,
        "precision": settings.precision,
        "overrides": settings.overrides(),
    }
    if crop is None:  # a Keypoint R-CNN: the detector stage gives the keypoints too
        crops, keypoints = PersonCrops(None, settings.person_threshold, settings.max_persons), None
        detector = {
            "spec": settings.keypoints,
            "options": options,
            "crops": crops,
            "arch": settings.keypoint_arch,
            "use_gpu": resources.use_gpu,
            "precision": settings.precision,
        }
    elif settings.boxes is None:
        crops = PersonCrops(crop, settings.person_threshold, settings.max_persons)
        detector = {
            "spec": settings.detector,
            "options": options,
            "crops": crops,
            "arch": settings.detector_arch,
            "use_gpu": resources.use_gpu,
            "precision": settings.precision,
        }
    else:  # every given box scoring at least --box-threshold, as the COCO protocol evaluates them
        crops, detector = PersonCrops(crop, settings.box_threshold, 2**31 - 1), None

    def on_actors(dataset, stage, arguments: dict, batch_size: int, actors: int):
        return dataset.map_batches(
            stage,
            fn_constructor_kwargs=arguments,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=resources.actor_cpus,
            num_gpus=resources.actor_gpus,
        )

    if resources.combined:
        # The actors read and decode their own images (cheap next to the models on a CPU): no
        # reading tasks, whose worker processes cost memory each and Ray's per-task overhead, and no
        # decoded pixels through the object store.
        arguments = {"detector": detector, "keypoints": keypoints, "read": read, "crops": crops}
        dataset = on_actors(
            dataset, DetectorAndKeypoints, arguments, resources.detector_batch, resources.detector_actors
        )
    else:
        # Reading and decoding in tasks of their own, so that the GPU actors only run models.
        dataset = dataset.map_batches(
            read_images,
            fn_kwargs=read,
            batch_size=resources.detector_batch,
            compute=ray.data.TaskPoolStrategy(size=resources.read_tasks),
            num_cpus=resources.task_cpus,
        )
        if detector is None:
            dataset = dataset.map_batches(
                given_boxes,
                fn_kwargs={"crops": crops},
                batch_size=resources.detector_batch,
                compute=ray.data.TaskPoolStrategy(size=resources.read_tasks),
                num_cpus=resources.task_cpus,
            )
        else:
            stage = Detector if keypoints is not None else KeypointDetector
            dataset = on_actors(dataset, stage, detector, resources.detector_batch, resources.detector_actors)
        if keypoints is not None:
            # Images per keypoint call: enough for about one model batch of persons.
            dataset = on_actors(
                dataset, KeypointModel, keypoints, max(1, resources.keypoint_batch // 4), resources.keypoint_actors
            )

    gathered: dict[str, dict[str, list]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["unit"])):
            row = {name: column[i] for name, column in batch.items()}
            unit = str(row["unit"])
            tables = gathered.setdefault(unit, {"annotations": [], "errors": []})
            if row["error_stage"]:
                tables["errors"].append(error_row(row))
            else:
                tables["annotations"].append(annotation_row(row, category_names, settings.nms_threshold))
            if len(tables["annotations"]) + len(tables["errors"]) == expected[unit]:
                yield write_shard(unit, gathered.pop(unit), dest, options, fingerprints[unit])


def write_shard(unit: str, tables: dict[str, list[dict]], dest: str, options: StorageOptions, fingerprint: str) -> dict:
    """Commit a complete shard (`jobs.shards.commit_shard`): its tables, rows in image id order, then
    its marker, which also counts the shard's images; return the marker."""
    paths = {
        name: (
            f"{name}/{unit}.parquet",
            sorted(tables[name], key=lambda r: r["item"] if name == "errors" else r["image_id"]),
        )
        for name in ("annotations", "errors")
    }
    images = sum(len(rows) for _, rows in paths.values())
    return shards.commit_shard(dest, options, unit, fingerprint, paths, images=images)


def _annotation_tables(dest: str, options: StorageOptions, markers: dict[str, dict]):
    """The committed `annotations` files, one table at a time (memory: one shard)."""
    import pyarrow.parquet as pq

    for unit in sorted(markers):
        with open_input(join(dest, markers[unit]["tables"]["annotations"]["path"]), options) as handle:
            yield pq.read_table(handle)


def _write_results(dest: str, options: StorageOptions, markers: dict[str, dict]) -> dict:
    """The COCO results files, streamed shard by shard into a JSON array."""
    counts = {}
    for name, entries in ((RESULTS_KEYPOINTS, keypoint_results), (RESULTS_BOXES, box_results)):
        count = 0
        with open_output_atomic(join(dest, name), options) as handle:
            handle.write(b"[")
            for table in _annotation_tables(dest, options, markers):
                for entry in entries(table):
                    handle.write((b",\n" if count else b"\n") + json.dumps(entry).encode())
                    count += 1
            handle.write(b"\n]\n")
        counts[name] = count
    return counts


def draw_pictures(
    dest: str,
    options: StorageOptions,
    markers: dict[str, dict],
    category_names,
    count: int,
    *,
    exif_transpose: bool = True,
    min_score: float = 0.5,
) -> list[str]:
    """PNGs of the first `count` annotated images (listing order): every detection scoring at least
    `min_score` with its class and score, and each person's skeleton (joints above 0.2)."""
    from pose import draw

    written = []
    for table in _annotation_tables(dest, options, markers):
        for row in table.to_pylist():
            if len(written) >= count:
                return written
            image = decode_image(read_image_source(row["source"], options), exif_transpose=exif_transpose)
            others = [
                d for d in row["detections"] if d["score"] >= min_score and d["category_id"] != PERSON_CATEGORY["id"]
            ]
            picture = draw.draw_detections(
                image,
                np.array([d["bbox"] for d in others]).reshape(-1, 4),
                [d["category"] for d in others],
                [d["score"] for d in others],
            )
            persons = [p for p in row["persons"] if p["box_score"] >= min_score]
            picture = draw.draw_persons(
                np.asarray(picture),
                np.array([p["bbox"] for p in persons]).reshape(-1, 4),
                np.array([p["keypoints"] for p in persons]).reshape(-1, NUM_JOINTS, 3),
                labels=["person"] * len(persons),
                scores=[p["box_score"] for p in persons],
                visibility=False,
                min_confidence=0.2,
            )
            path = f"pictures/{row['image_id']}.png"
            write_bytes_atomic(join(dest, path), encode_png(np.asarray(picture)), options)
            written.append(path)
    return written


def annotate(
    src: str,
    dest: str,
    settings: AnnotateSettings,
    options: StorageOptions = StorageOptions(),
    *,
    visualize: int = 0,
    address: str | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> dict:
    """Annotate the images at SRC into DST (see the module docstring); returns the manifest."""
    src, dest = absolute(src), absolute(dest)  # workers do not share the driver's working directory
    settings = AnnotateSettings(
        **{
            **asdict(settings),
            "detector": settings.detector and absolute(settings.detector),
            "keypoints": absolute(settings.keypoints),
            "boxes": settings.boxes and absolute(settings.boxes),
        }
    )
    check_readable(src, options)
    plan = plan_annotate(src, dest, options, settings.shard_images)
    return run_annotate(
        plan, dest, options, settings, visualize=visualize, address=address, verbose=verbose, progress=progress
    )
