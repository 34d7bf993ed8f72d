"""Annotate benchmark: `pose-jobs annotate` against a plain single-process loop and against the
model-only limit, on the same synthetic COCO images and the same models; and the job's peak
memory at 1x and 10x the images.

    python benchmarks/annotate.py                  # 48 images, 10x = 480
    python benchmarks/annotate.py --images 24 --scale 4
    python benchmarks/annotate.py --keypoints rtmpose-m,hrnet-w32,resnet50 --images 16

- plain loop: what a user would write without Ray: one process (torch on every core), one image
  at a time: read, decode, detect, cut the persons, keypoints (flip test).
- model-only limit: the same forward passes on images decoded and persons cut beforehand, with the
  job's batch sizes and precision (`--precision`, default auto: bf16 on CPUs with native bf16; the
  plain loop stays float32, as a user writes it), in one process per core (torch on one thread
  each), as the job's actors run:
  the most the job could do on this machine if reading, decoding, cropping and moving data cost
  nothing.
- pose-jobs annotate: the job on a Ray that is already running (its actors start inside the
  timing, as they do in every run), on the 1x and on the 10x images. What any run pays whatever
  its size (actors starting, models loading, results written) cancels in the difference: the 10x
  run's extra images over its extra time are the rate a large bucket sees ("beyond the fixed
  cost"), and the ratios to the plain loop and the limit are printed for it too. On CPUs the
  job's other plan (two pools, as on GPUs) is timed for comparison. The whole command's wall
  time, Ray's start included, is printed with the memory.

With `--keypoints FAMILIES` it times published keypoint families instead, side by side: for each,
a file in MMPose's published layout (random weights: speed does not depend on them) and
`annotate --boxes` with the images' ground-truth person boxes (no detector), as a ratio to that
model's forward-only limit (the same crops cut beforehand, forward and flip forward, one process
per core on one torch thread, in the job's precision). Its rate is taken beyond the fixed cost: the
images of the timed run less a 2-image run, over the difference of their times.

The models are the CPU defaults: Faster R-CNN MobileNetV3-FPN at 512 px (91 COCO classes) and the
ResNet-18 keypoint model at 96x128. They are untrained (nothing is downloaded), so the person logit
of the detector is raised to make it report persons; `--max-persons` (default 4) keeps the
keypoint work per image near the synthetic scenes' people count. Speed does not depend on the
weights' values. Memory is the peak summed PSS of the command's process tree (driver, Ray's GCS,
raylet and workers), sampled every second (`_measure.peak_tree_pss`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch
from _measure import load_average, machine, peak_tree_pss, timed
from _workload import cut_persons, synthetic_coco, untrained_models

from pose.images import IMAGE_SUFFIXES, decode_image
from pose.keypoint_task import KeypointRecipe
from pose.models.detector import DetectorConfig, detect, person_boxes
from pose.precision import PRECISIONS, inference_precision

PERSON_THRESHOLD = 0.3


def load_models(detector_dir: str, keypoint_dir: str):
    """(detector, keypoint PoseModel), both on the CPU in eval mode."""
    from jobs.models import load_detector, load_pose_model

    return load_detector(detector_dir), load_pose_model(keypoint_dir)


def plain_loop(paths: list[Path], detector_dir: str, keypoint_dir: str, max_persons: int) -> float:
    """One process, one image at a time; returns images/s (model loading not timed)."""
    from pose.topdown import TopDownPredictor

    detector, keypoint_model = load_models(detector_dir, keypoint_dir)
    predictor = TopDownPredictor(keypoint_model)

    def loop() -> None:
        for path in paths:
            image = decode_image(path.read_bytes())
            found = detect(detector, [image])[0]
            chosen = person_boxes(found["boxes"], found["scores"], found["labels"], PERSON_THRESHOLD, max_persons)
            predictor(image, found["boxes"][chosen], found["scores"][chosen])

    return len(paths) / timed(loop)[0]


def _model_only_worker(arguments) -> float:
    """One core's share of the model-only limit: seconds for its forward passes, in the job's
    precision."""
    from pose.topdown import TopDownPredictor

    images, inputs, detector_dir, keypoint_dir, detector_batch, keypoint_batch, precision = arguments
    torch.set_num_threads(1)
    detector, keypoint_model = load_models(detector_dir, keypoint_dir)
    arithmetic = inference_precision("cpu", precision)
    detector = arithmetic.prepare(detector)
    predictor = TopDownPredictor(keypoint_model, precision=arithmetic, batch_size=keypoint_batch)
    tensors = [torch.from_numpy(image).permute(2, 0, 1).contiguous() for image in images]

    def forward() -> None:
        with arithmetic.autocast(torch.device("cpu")):
            for start in range(0, len(tensors), detector_batch):
                detect(detector, tensors[start : start + detector_batch])
        predictor.keypoints(inputs, np.tile(np.eye(2, 3), (len(inputs), 1, 1)))

    return timed(forward)[0]


def model_only_limit(
    paths, detector_dir, keypoint_dir, max_persons, processes, detector_batch, keypoint_batch, precision="auto"
) -> float:
    """images/s of the forward passes alone, `processes` processes with one torch thread each."""
    detector, keypoint_model = load_models(detector_dir, keypoint_dir)
    images = [decode_image(path.read_bytes()) for path in paths]
    inputs = [
        cut_persons(image, detect(detector, [image])[0], keypoint_model.crop, PERSON_THRESHOLD, max_persons)[0]
        for image in images
    ]
    shares = []
    for p in range(processes):
        mine = list(range(p, len(images), processes))
        persons = np.concatenate([inputs[i] for i in mine]) if mine else np.zeros((0,))
        shares.append(
            ([images[i] for i in mine], persons, detector_dir, keypoint_dir, detector_batch, keypoint_batch, precision)
        )
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        seconds = pool.map(_model_only_worker, shares)
    return len(images) / max(seconds), sum(len(i) for i in inputs) / len(images)


# Published file names, so that pose.checkpoints reads input size and codec as it does for real files.
PUBLISHED_NAMES = {
    "resnet50": "td-hm_res50_8xb64-210e_coco-256x192-random.pth",
    "hrnet-w32": "td-hm_hrnet-w32_8xb64-210e_coco-256x192-random.pth",
    "hrnet-w48": "td-hm_hrnet-w48_8xb32-210e_coco-256x192-random.pth",
    "rtmpose-t": "rtmpose-t_simcc-coco_pt-aic-coco_420e-256x192-random.pth",
    "rtmpose-s": "rtmpose-s_simcc-coco_pt-aic-coco_420e-256x192-random.pth",
    "rtmpose-m": "rtmpose-m_simcc-coco_pt-aic-coco_420e-256x192-random.pth",
    "rtmpose-l": "rtmpose-l_simcc-coco_pt-aic-coco_420e-256x192-random.pth",
}


def write_published(folder: Path, family: str) -> str:
    """A file in MMPose's published container ({"meta", "state_dict"}) for `family`, random weights."""
    from pose.checkpoints import CheckpointSpec, build_network

    torch.manual_seed(0)
    spec = CheckpointSpec("mmpose", family, (192, 256), "simcc" if family.startswith("rtmpose") else "msra")
    path = folder / PUBLISHED_NAMES[family]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": {"dataset_meta": {"num_keypoints": 17}}, "state_dict": build_network(spec).state_dict()}, path)
    return str(path)


def ground_truth_boxes(coco: Path, split: str, out: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """COCO box results of every annotated, non-crowd person (score 1), written to `out`; by image id."""
    from jobs.annotate import boxes_by_image

    annotations = json.loads((coco / "annotations" / f"person_keypoints_{split}2017.json").read_text())["annotations"]
    entries = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
        for a in annotations
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    out.write_text(json.dumps(entries))
    return boxes_by_image(entries)


def _forward_worker(arguments) -> float:
    """One core's share of a family's forward-only limit: seconds for its forward passes."""
    from jobs.models import load_pose_model

    spec, crops, batch, precision = arguments
    torch.set_num_threads(1)
    model = load_pose_model(spec)
    arithmetic = inference_precision("cpu", precision)
    network = arithmetic.prepare(model.network)

    def forward() -> None:
        with torch.no_grad(), arithmetic.autocast(torch.device("cpu")):
            for start in range(0, len(crops), batch):
                inputs = model.inputs(torch.from_numpy(crops[start : start + batch]))
                if arithmetic.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                network(inputs)
                network(inputs.flip(-1))

    return timed(forward)[0]


def published_families(families: list[str], workdir: Path, images: int, precision: str) -> None:
    """annotate --boxes with each published family against its forward-only limit (see the module text)."""
    from jobs.annotate import AnnotateSettings, annotate, plan_resources
    from jobs.models import load_pose_model
    from jobs.runtime import init_ray
    from pose.synth.people import write_coco
    from pose.topdown import cut_crops

    coco = workdir / "coco-published"
    if not coco.exists():
        write_coco(coco, split="val", images=images, seed=0)
    boxes = ground_truth_boxes(coco, "val", workdir / "boxes.json")
    paths = sorted(p for p in (coco / "val2017").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    two = workdir / "two-images"
    two.mkdir(exist_ok=True)
    for path in paths[:2]:
        shutil.copy(path, two / path.name)
    init_ray()
    import ray

    processes = os.cpu_count()
    for family in families:
        spec = write_published(workdir / "published", family)
        settings = AnnotateSettings(None, spec, boxes=str(workdir / "boxes.json"), precision=precision)
        resources = plan_resources(settings, ray.cluster_resources().get("CPU", 1), 0)
        times = {}
        for name, source in (("warm-up", two), ("2 images", two), ("all", coco / "val2017")):
            shutil.rmtree(workdir / f"out-{family}", ignore_errors=True)
            times[name] = timed(annotate, str(source), str(workdir / f"out-{family}"), settings, progress=False)[0]
        rate = (len(paths) - 2) / max(times["all"] - times["2 images"], 1e-9)
        crop = load_pose_model(spec).crop
        no_boxes = (np.zeros((0, 4)), np.zeros(0))
        crops = [cut_crops(decode_image(p.read_bytes()), boxes.get(int(p.stem), no_boxes)[0], crop)[0] for p in paths]
        persons = sum(len(c) for c in crops)
        shares = [
            (
                spec,
                np.concatenate([crops[i] for i in range(k, len(crops), processes)]),
                resources.keypoint_batch,
                precision,
            )
            for k in range(processes)
        ]
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            limit = len(paths) / max(pool.map(_forward_worker, shares))
        print(
            f"{family:<10} {persons / len(paths):4.1f} persons/image   "
            f"annotate {len(paths) / times['all']:6.2f} images/s "
            f"({rate:.2f} beyond the fixed cost)   forward-only limit {limit:6.2f} images/s   ratio {rate / limit:.2f}",
            flush=True,
        )
    ray.shutdown()
    print(
        f"precision: {inference_precision('cpu', precision).describe()}; {machine()}; {len(paths)} images; "
        "boxes: ground truth",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--max-persons", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the job's and the model-only limit's (annotate --precision); the plain loop is float32",
    )
    parser.add_argument(
        "--keypoints",
        default=None,
        help=f"time these published families instead, comma-separated: {', '.join(PUBLISHED_NAMES)}",
    )
    args = parser.parse_args()
    if args.keypoints:
        families = args.keypoints.split(",")
        unknown = [f for f in families if f not in PUBLISHED_NAMES]
        if unknown:
            parser.error(f"unknown families {unknown}; choose from {', '.join(PUBLISHED_NAMES)}")
        published_families(
            families,
            args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-published-")),
            args.images,
            args.precision,
        )
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-annotate-"))
    small, large = synthetic_coco(workdir, args.images, args.scale, "val")
    # The CPU defaults, untrained; persons favoured over the classes the random weights favour.
    detector_dir, keypoint_dir = untrained_models(workdir / "models", DetectorConfig(), KeypointRecipe(), 4.0)
    folder = small / "val2017"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    from jobs.annotate import AnnotateSettings, annotate, plan_resources
    from jobs.runtime import init_ray

    init_ray()
    import ray

    settings = AnnotateSettings(detector_dir, keypoint_dir, max_persons=args.max_persons, precision=args.precision)
    cpus = ray.cluster_resources().get("CPU", 1)
    resources = plan_resources(settings, cpus, ray.cluster_resources().get("GPU", 0))
    warm = workdir / "warm-images"  # Ray's worker processes started once, on two images
    warm.mkdir(exist_ok=True)
    for path in paths[:2]:
        shutil.copy(path, warm / path.name)
    shutil.rmtree(workdir / "warmup", ignore_errors=True)
    annotate(str(warm), str(workdir / "warmup"), settings, progress=False)
    # What every run pays whatever its size (actors starting, models loading, results and manifest
    # written): a second run over the two images.
    shutil.rmtree(workdir / "warmup", ignore_errors=True)
    fixed, _ = timed(annotate, str(warm), str(workdir / "warmup"), settings, progress=False)
    shutil.rmtree(workdir / "ray-out", ignore_errors=True)
    job_seconds, _ = timed(annotate, str(folder), str(workdir / "ray-out"), settings, progress=False)
    job_rate = len(paths) / job_seconds
    # The rate a large bucket sees: the extra images of the 10x run over its extra time, so that
    # whatever any run pays cancels out.
    large_count = args.images * args.scale
    shutil.rmtree(workdir / "ray-out-large", ignore_errors=True)
    large_seconds, _ = timed(annotate, str(large / "val2017"), str(workdir / "ray-out-large"), settings, progress=False)
    marginal_rate = (large_count - len(paths)) / max(large_seconds - job_seconds, 1e-9)
    split_rate = None
    if resources.combined:  # the two-pool plan of GPUs, on these CPUs, for comparison
        shutil.rmtree(workdir / "ray-out-split", ignore_errors=True)
        split = dataclasses.replace(settings, keypoint_actors=max(1, round(cpus / 3)))
        split_resources = plan_resources(split, cpus, 0)
        split_rate = len(paths) / timed(annotate, str(folder), str(workdir / "ray-out-split"), split, progress=False)[0]
    ray.shutdown()

    pools = (
        f"{resources.detector_actors} actors running both models"
        if resources.combined
        else f"{resources.detector_actors} detector + {resources.keypoint_actors} keypoint actors"
    )
    print(
        f"precision (job and model-only limit): {inference_precision('cpu', args.precision).describe()}; "
        "plain loop: fp32",
        flush=True,
    )
    print(
        f"{machine()}, images: {len(paths)} (1x), {args.images * args.scale} ({args.scale}x); "
        f"pools: {pools}, batches {resources.detector_batch} images / {resources.keypoint_batch} persons",
        flush=True,
    )
    print(
        f"pose-jobs annotate (Ray warm)   {job_rate:8.2f} images/s   ({job_seconds:.1f} s; {fixed:.1f} s on 2 images)",
        flush=True,
    )
    print(
        f"  on {large_count} images: {large_count / large_seconds:.2f} images/s ({large_seconds:.1f} s): "
        f"{marginal_rate:.2f} images/s beyond the {len(paths)}-image run's time",
        flush=True,
    )
    if split_rate is not None:
        print(
            f"  two pools instead ({split_resources.detector_actors} detector + "
            f"{split_resources.keypoint_actors} keypoint actors, as on GPUs): {split_rate:.2f} images/s",
            flush=True,
        )
    torch.set_num_threads(os.cpu_count())
    plain_rate = plain_loop(paths, detector_dir, keypoint_dir, args.max_persons)
    print(
        f"plain single-process loop       {plain_rate:8.2f} images/s   (load average {load_average():.1f})",
        flush=True,
    )
    processes = os.cpu_count()
    limit_rate, persons = model_only_limit(
        paths,
        detector_dir,
        keypoint_dir,
        args.max_persons,
        processes,
        resources.detector_batch,
        resources.keypoint_batch,
        args.precision,
    )
    print(
        f"model-only limit ({processes} processes)   {limit_rate:8.2f} images/s   "
        f"({persons:.1f} persons per image; load average {load_average():.1f})",
        flush=True,
    )
    print(
        f"annotate: x{job_rate / plain_rate:.2f} the plain loop, {job_rate / limit_rate:.2f} of the model-only limit; "
        f"beyond the fixed cost x{marginal_rate / plain_rate:.2f} and {marginal_rate / limit_rate:.2f}",
        flush=True,
    )

    cli = str(Path(sys.executable).with_name("pose-jobs"))
    common = [
        "--detector",
        detector_dir,
        "--keypoints",
        keypoint_dir,
        "--max-persons",
        str(args.max_persons),
        "--precision",
        args.precision,
    ]
    peaks = {}
    for name, source, count in (("1x", folder, len(paths)), (f"{args.scale}x", large / "val2017", large_count)):
        shutil.rmtree(workdir / f"cli-{name}", ignore_errors=True)
        with open(workdir / f"cli-{name}.stderr", "wb") as log:
            wall, peaks[name] = peak_tree_pss(
                [cli, "annotate", str(source), str(workdir / f"cli-{name}"), *common], stderr=log
            )
        print(
            f"pose-jobs annotate command, Ray start included, {name}: {count / wall:.2f} images/s ({wall:.0f} s), "
            f"peak memory (PSS, whole job) {peaks[name]:.0f} MiB",
            flush=True,
        )
    print(f"peak memory ratio {args.scale}x / 1x: {peaks[f'{args.scale}x'] / peaks['1x']:.2f}", flush=True)


if __name__ == "__main__":
    main()
