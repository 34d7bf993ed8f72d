"""`pose-jobs demo`: every stage once on a local Ray, local storage and synthetic data.

synthesise -> ingest -> pictures -> train the three models briefly (digits, keypoints, person
detector) -> evaluate -> annotate a bucket of synthetic images with the detector and the keypoint
model, with a summary of the figures and where everything is. Each stage calls the library
function its `pose-jobs` command calls (jobs/train.py for training). The training here is
short, to show the pipeline; docs/training.md gives the recipes of full runs.
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
    "--detector fasterrcnn_resnet50_fpn_coco-258fb6c6.pth "
    "--keypoints td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth (MMPose HRNet-W32), "
    "or --keypoints keypointrcnn_resnet50_fpn_coco-fc266e95.pth alone (torchvision Keypoint R-CNN)"
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

    from jobs.evaluate import evaluate_detector, evaluate_keypoints, evaluate_svhn
    from jobs.train import TrainSettings, train_digit_model, train_keypoint_model, train_person_detector
    from pose.digit_task import DigitRecipe
    from pose.recipes import detector_recipe, keypoint_recipe

    coco, svhn, options = str(out / "coco"), str(out / "svhn"), StorageOptions()
    runs = {name: str(out / "runs" / name) for name in ("svhn", "keypoints", "detector")}

    def train_and_evaluate(name: str, what: str, train, recipe, data: str, evaluate, split: str, result, note=""):
        """Train `what` on 2 workers into runs[name], evaluate it on `split`, and sum it up."""
        started = stage(f"train {what} (Ray Train, 2 workers)")
        train(recipe, TrainSettings(data=data, out=runs[name], workers=2), address=address, verbose=verbose)
        figures = evaluate(data, runs[name], split, options, str(pictures))
        seconds = time.perf_counter() - started
        summary.append((name, f"{result(figures)} after {recipe.epochs} epochs ({seconds:.0f} s{note})"))

    train_and_evaluate(
        "svhn",
        "the SVHN digit model",
        train_digit_model,
        DigitRecipe(epochs=sizes.svhn_epochs, min_steps=0),  # a brief run: exactly these epochs
        svhn,
        evaluate_svhn,
        "test",
        lambda figures: f"test accuracy {figures['accuracy']:.4f} on {figures['samples']} digits",
    )
    train_and_evaluate(
        "keypoints",
        "the keypoint model",
        train_keypoint_model,
        keypoint_recipe("cpu", epochs=sizes.keypoint_epochs),
        coco,
        evaluate_keypoints,
        "val",
        lambda figures: f"val PCK {figures['pck']:.3f}, AP {figures['ap']:.3f}",
        "; short: see docs/training.md for full runs",
    )
    train_and_evaluate(
        "detector",
        "the person detector",
        train_person_detector,
        detector_recipe(epochs=sizes.detector_epochs),
        coco,
        evaluate_detector,
        "val",
        lambda figures: f"val person box AP {figures['ap']:.3f}, AP50 {figures['ap50']:.3f}",
        "; short: see docs/training.md",
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
    from jobs.annotate import AnnotateSettings, annotate

    rcnn = keypoints is not None and is_keypoint_rcnn(keypoints, options)
    settings = AnnotateSettings(
        detector=None if rcnn else (detector or runs["detector"]), keypoints=keypoints or runs["keypoints"]
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
                "the annotation used the models trained above for minutes; for pictures that show something "
                f"pass {PUBLISHED_EXAMPLE}",
            )
        )
    summary.append(
        (
            "pictures",
            f"{len(list(pictures.glob('*.png')))} PNGs in {pictures}, "
            f"{len(manifest['pictures'])} in {out / 'annotated' / 'pictures'}",
        )
    )
    summary.append(("runs", f"checkpoints, metrics.jsonl, curves.png, model.pt in {out / 'runs'}"))
    return summary
