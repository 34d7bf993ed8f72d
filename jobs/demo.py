"""`pose-jobs demo`: the main job on the embedded default (local Ray, local storage, synthetic data).

synthesise -> ingest -> pictures -> train the three models briefly (digits, keypoints, person
detector) -> evaluate -> annotate a bucket of synthetic images with the detector and the keypoint
model, with a summary of the figures and where everything is. The training here is short, to show the pipeline; the README
gives the recipes and the figures of full runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass(frozen=True)
class DemoSizes:
    coco_train: int = 200
    coco_val: int = 50
    svhn_train: int = 10000
    svhn_test: int = 1000
    svhn_numbers: int = 100
    svhn_epochs: int = 4
    keypoint_epochs: int = 2
    detector_epochs: int = 2

    @classmethod
    def quick(cls) -> DemoSizes:
        return cls(
            coco_train=40,
            coco_val=12,
            svhn_train=3000,
            svhn_test=300,
            svhn_numbers=20,
            svhn_epochs=3,
            keypoint_epochs=1,
            detector_epochs=1,
        )


# Published files that make the annotation step meaningful (trained for minutes here, the demo's own
# models find almost nothing); none can be downloaded here, the user brings them.
PUBLISHED_EXAMPLE = (
    "--detector fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --keypoints td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth "
    "(MMPose HRNet-W32), or --keypoints keypointrcnn_resnet50_fpn_coco-fc266e95.pth alone (torchvision Keypoint R-CNN)"
)


def run_demo(
    out: Path,
    sizes: DemoSizes = DemoSizes(),
    *,
    detector: str | None = None,
    keypoints: str | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> list[tuple[str, str]]:
    """Run every stage into `out`; returns (figure, value) rows for the summary. `detector` and
    `keypoints` (published files, local or s3://; see `pose-jobs annotate`) replace the models
    trained here in the annotation step, and a published keypoint file is also evaluated."""
    from jobs.ingest import ingest
    from jobs.show import show_coco, show_svhn
    from jobs.storage import StorageOptions
    from pose.synth.digits import write_svhn
    from pose.synth.people import write_coco

    out.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, str]] = []

    def stage(name: str):
        typer.echo(f"== {name}", err=True)
        return time.perf_counter()

    started = stage("synthesise COCO people and SVHN digits")
    coco_src, svhn_src = out / "coco-src", out / "svhn-src"
    if not (coco_src / "annotations" / "person_keypoints_val2017.json").exists():
        write_coco(coco_src, split="train", images=sizes.coco_train, seed=0)
        write_coco(coco_src, split="val", images=sizes.coco_val, seed=1)
    if not (svhn_src / "test" / "digitStruct.mat").exists():
        write_svhn(svhn_src, format="cropped", seed=0, train=sizes.svhn_train, test=sizes.svhn_test)
        write_svhn(svhn_src, format="full", seed=1, train=sizes.svhn_numbers, test=sizes.svhn_numbers // 4)
    summary.append(("synthesise", f"{time.perf_counter() - started:.1f} s"))

    started = stage("ingest COCO and SVHN into Parquet (Ray Data)")
    coco_manifest = ingest("coco", str(coco_src), str(out / "coco"), address=address, verbose=verbose)
    svhn_manifest = ingest("svhn", str(svhn_src), str(out / "svhn"), address=address, verbose=verbose)
    summary.append(("ingest", f"{time.perf_counter() - started:.1f} s"))
    for name, manifest in (("coco", coco_manifest), ("svhn", svhn_manifest)):
        rows = ", ".join(f"{table} {entry['rows']}" for table, entry in sorted(manifest["tables"].items()))
        balanced = all(entry["balanced"] for entry in manifest["accounting"].values())
        summary.append((f"{name} tables", f"{rows} ({'every input accounted for' if balanced else 'NOT BALANCED'})"))

    stage("pictures")
    pictures = out / "pictures"
    show_coco(str(out / "coco"), pictures, split="val", images=3)
    show_svhn(str(out / "svhn"), pictures, digits=100, numbers=6)

    started = stage("train the SVHN digit model (Ray Train, 2 workers)")
    from dataclasses import replace

    from jobs.evaluate import evaluate_keypoints, evaluate_svhn, keypoint_ground_truth
    from jobs.train import TrainSettings, run_training
    from pose.digit_task import DigitRecipe, DigitTask
    from pose.keypoint_task import KeypointRecipe, KeypointTask

    digit_recipe = DigitRecipe(epochs=sizes.svhn_epochs, min_steps=0)  # a brief run: exactly these epochs
    run_training(
        DigitTask(digit_recipe),
        TrainSettings(data=str(out / "svhn"), out=str(out / "runs" / "svhn"), workers=2),
        digit_recipe.epochs,
        address=address,
        verbose=verbose,
    )
    digits = evaluate_svhn(str(out / "svhn"), str(out / "runs" / "svhn"), "test", StorageOptions(), pictures)
    summary.append(
        (
            "svhn",
            f"test accuracy {digits['accuracy']:.4f} on {digits['samples']} digits after {digit_recipe.epochs} epochs ({time.perf_counter() - started:.0f} s)",
        )
    )

    started = stage("train the keypoint model (Ray Train, 2 workers)")
    keypoint_recipe = replace(KeypointRecipe(), epochs=sizes.keypoint_epochs)
    task = KeypointTask(keypoint_recipe, ground_truth=keypoint_ground_truth(str(out / "coco"), "val", StorageOptions()))
    run_training(
        task,
        TrainSettings(data=str(out / "coco"), out=str(out / "runs" / "keypoints"), workers=2),
        keypoint_recipe.epochs,
        address=address,
        verbose=verbose,
    )
    keypoints = evaluate_keypoints(
        str(out / "coco"), str(out / "runs" / "keypoints"), "val", StorageOptions(), pictures
    )
    summary.append(
        (
            "keypoints",
            f"val PCK {keypoints['pck']:.3f}, AP {keypoints['ap']:.3f} after {keypoint_recipe.epochs} epochs ({time.perf_counter() - started:.0f} s; short: see README for full runs)",
        )
    )

    started = stage("train the person detector (Ray Train, 2 workers)")
    import functools

    from jobs.annotate import AnnotateSettings, annotate
    from jobs.detector_data import detector_rows, person_boxes_by_image
    from jobs.evaluate import evaluate_detector
    from pose.detector_task import DetectorRecipe, DetectorTask

    coco, options = str(out / "coco"), StorageOptions()
    detector_recipe = DetectorRecipe.from_scratch(epochs=sizes.detector_epochs)
    detector_task = DetectorTask(detector_recipe, ground_truth=keypoint_ground_truth(coco, "val", options))
    boxes = person_boxes_by_image(coco, (*detector_task.train_splits, detector_task.val_split), options)
    prepare = functools.partial(detector_rows, boxes=boxes, options=options)
    detector_dir = str(out / "runs" / "detector")
    run_training(
        detector_task,
        TrainSettings(data=coco, out=detector_dir, workers=2),
        detector_recipe.epochs,
        address=address,
        verbose=verbose,
        prepare_rows=prepare,
    )
    boxes_figures = evaluate_detector(coco, detector_dir, "val", options, pictures)
    summary.append(
        (
            "detector",
            f"val person box AP {boxes_figures['ap']:.3f}, AP50 {boxes_figures['ap50']:.3f} after {detector_recipe.epochs} epochs ({time.perf_counter() - started:.0f} s; short: see README)",
        )
    )

    from jobs.models import is_keypoint_rcnn

    if keypoints is not None and not is_keypoint_rcnn(keypoints, options):
        started = stage(f"evaluate {keypoints} on the synthetic val split (ground-truth boxes)")
        from jobs.evaluate import evaluate_topdown

        published = evaluate_topdown(coco, keypoints, "val", options)
        summary.append(
            (
                "published keypoints",
                f"{published['model']}: val AP {published['ap']:.3f}, AP50 {published['ap50']:.3f} "
                f"on {published['instances']} persons ({time.perf_counter() - started:.0f} s)",
            )
        )
    started = stage("annotate a bucket of images: detector -> keypoints (Ray Data actor pools)")
    rcnn = keypoints is not None and is_keypoint_rcnn(keypoints, options)
    settings = AnnotateSettings(
        detector=None if rcnn else (detector or detector_dir), keypoints=keypoints or str(out / "runs" / "keypoints")
    )
    manifest = annotate(
        str(coco_src / "val2017"),
        str(out / "annotated"),
        settings,
        options,
        visualize=4,
        address=address,
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    images = manifest["images"]
    summary.append(
        (
            "annotate",
            f"{images['annotated']} images annotated, {images['errors']} errors of {images['listed']} listed "
            f"({images['listed'] / seconds:.1f} images/s including start-up) -> {out / 'annotated'}",
        )
    )
    if keypoints is None:
        summary.append(
            (
                "published models",
                f"the annotation used the models trained above for minutes; for pictures that show something pass {PUBLISHED_EXAMPLE}",
            )
        )
    summary.append(
        (
            "pictures",
            f"{len(list(pictures.glob('*.png')))} PNGs in {pictures}, {len(manifest['pictures'])} in {out / 'annotated' / 'pictures'}",
        )
    )
    summary.append(("runs", f"checkpoints, metrics.jsonl, curves.png, model.pt in {out / 'runs'}"))
    return summary
