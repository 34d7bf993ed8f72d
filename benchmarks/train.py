"""Training benchmark: is the data feed ever the bottleneck?

Every figure is the training engine's own loop (`pose.engine.train_one_epoch`, the step Ray Train
workers run). For each model it prints samples/s of
  - the step alone, on one prepared batch already in memory (the ceiling),
  - the pose-side loop: Parquet rows -> task.prepare_batch (decode, augment, targets) on
    `--feed-workers` processes ahead of the step (`pose.feed.BatchFeed`, as Ray Train GPU workers
    run it; 0: inline, as CPU workers run it) -> task.device_inputs -> step, in one process, no Ray,
  - the real thing: `pose-jobs train-*` on Ray Train with 1 and 2 workers (second epoch, so
    start-up is not counted; the same global batch on both),
and the feed ratio = real loop / ceiling (goal >= 0.9).

`--recipe cpu` is the keypoint CPU recipe; `--recipe coco` is Simple Baselines' network and input
(ResNet-50, three 256-channel deconvolutions, 256x192, batch 128) in pose-jobs' own pipeline.

With `--no-ray --rows FOLDER` it imports nothing but `pose` (so it runs on a machine without Ray
or the job's storage libraries, e.g. a lent GPU): FOLDER holds Parquet files of the model's table
(`person_crops` or `digits`, from `pose-jobs ingest`).

    python benchmarks/train.py                      # both models, CPU, with Ray
    python benchmarks/train.py --model keypoints --no-ray --device cuda --rows crops/ \
        --recipe coco --batch-size 128 --feed-workers 14 --steps 60
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pyarrow as pa
import torch

from pose.engine import train_one_epoch
from pose.feed import BatchFeed, batches_of
from pose.precision import PRECISIONS, training_precision


def step_rate(task, batches: list[dict], device: torch.device, steps: int, *, reuse_inputs: bool, feed_workers: int = 0,
              processes: bool = True, precision: str = "auto") -> float:
    """samples/s of `steps` optimiser steps of `pose.engine.train_one_epoch`; inputs prepared once
    (ceiling) or per batch by `feed_workers` processes (or threads) ahead of the step (feed), as
    `pose.feed.BatchFeed` runs on a Ray Train worker. A first, untimed call warms up (allocator,
    cuDNN's autotuning) and drains what the feed prepared while it started. `precision` as the
    runner's (`pose.precision.training_precision`)."""
    torch.manual_seed(0)
    arithmetic = training_precision(device, precision, task)
    model = arithmetic.prepare(task.build_model().to(device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = getattr(task, "fixed_input_size", False)  # as the Ray Train workers set it
    optimizer, scheduler = task.build_optimizer(model, steps + 10)
    generator = torch.Generator().manual_seed(0)
    warmup = 3 + (0 if reuse_inputs else 2 * feed_workers)
    with BatchFeed(task.preparer(), 0 if reuse_inputs else feed_workers, processes=processes) as feed:
        if reuse_inputs:
            prepared = itertools.repeat(task.prepare_batch(batches[0], 0), warmup + steps)
        else:
            prepared = feed((batches[i % len(batches)] for i in range(warmup + steps)), 0)
        for count in (warmup, steps):  # the engine stops after `count` steps, the rest stays in `prepared`
            result = train_one_epoch(model, task, prepared, optimizer, scheduler, device=device, precision=arithmetic,
                                     max_steps=count, generator=generator)
        return result.samples_per_s


def prepare_rate(task, batches: list[dict], workers: int, processes: bool = True) -> float:
    """samples/s of task.prepare_batch alone on `workers` processes (or threads): what the feed can
    supply. Timed after the feed has started and prepared its first batches."""
    count = max(4, 3 * workers)
    with BatchFeed(task.preparer(), workers, processes=processes) as feed:
        results = feed((batches[i % len(batches)] for i in range(workers + count)), 0)
        for _ in range(workers):
            next(results)
        started = time.perf_counter()
        for _ in results:
            pass
        return count * task.batch_size / (time.perf_counter() - started)


def coco_network_recipe():
    """Simple Baselines' network and input (ResNet-50, three 256-channel deconvolutions, 256x192) at
    its global batch of 128, with pose-jobs' full augmentation on the stored crops: the GPU step of
    docs/benchmarks.md. Its optimiser settings do not matter for samples/s."""
    from pose.augment import AugmentConfig
    from pose.keypoint_task import KeypointRecipe

    return KeypointRecipe(backbone="resnet50", backbone_stages=4, deconv_layers=3, deconv_channels=256, input_size=(192, 256),
                          batch_size=128, augment=AugmentConfig(input_size=(192, 256)))


def parquet_rows(folder: Path) -> pa.Table:
    """Every Parquet file under `folder` (one table of an ingest output), as one table."""
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise SystemExit(f"{folder}: no Parquet files")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def svhn_rows(workdir: Path, count: int) -> tuple[pa.Table, Path]:
    """Synthetic SVHN as `digits` rows, made with ingest's own shard function (no Ray needed)."""
    from jobs.ingest import Shard, svhn_cropped_tables
    from jobs.storage import StorageOptions
    from pose import schema
    from pose.synth.digits import write_svhn

    src = workdir / "svhn-src"
    if not (src / "train_32x32.mat").exists():
        write_svhn(src, format="cropped", seed=0, train=count, test=max(200, count // 10))
    shard = Shard("bench", "train", "svhn-cropped", {"source": str(src / "train_32x32.mat"), "start": 0, "stop": count})
    rows = svhn_cropped_tables(shard, StorageOptions())["digits"]
    return pa.Table.from_pylist(rows, schema=schema.DIGITS), src


def keypoint_rows(workdir: Path, images: int) -> tuple[pa.Table, Path]:
    """Synthetic COCO as `person_crops` rows, made with ingest's own shard function (no Ray)."""
    from jobs.ingest import plan_coco, coco_shard_tables
    from jobs.storage import StorageOptions
    from pose import schema
    from pose.crops import CropSettings
    from pose.synth.people import write_coco

    src = workdir / "coco-src"
    if not (src / "annotations" / "person_keypoints_val2017.json").exists():
        write_coco(src, split="train", images=images, seed=0)
        write_coco(src, split="val", images=max(20, images // 10), seed=1)
    plan = plan_coco(str(src), StorageOptions(), ("train",), shard_images=images)
    rows = coco_shard_tables(plan.shards[0], StorageOptions(), CropSettings())["person_crops"]
    return pa.Table.from_pylist(rows, schema=schema.PERSON_CROPS), src


def ray_rates(task_factory, src: Path, dataset: str, workdir: Path, workers_list: list[int], epochs: int = 2,
              precision: str = "auto") -> dict[int, float]:
    """samples/s of the last epoch of `pose-jobs train-*` (Ray Train) for each worker count."""
    from jobs.ingest import ingest
    from jobs.runtime import init_ray
    from jobs.train import TrainSettings, run_training

    init_ray()
    ingested = workdir / f"{dataset}-ingested"
    ingest(dataset, str(src), str(ingested), progress=False)
    rates = {}
    for workers in workers_list:
        out = Path(tempfile.mkdtemp(prefix=f"run-{dataset}-{workers}w-", dir=workdir))
        task = task_factory()
        run_training(task, TrainSettings(data=str(ingested), out=str(out), workers=workers, precision=precision), epochs)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates[workers] = lines[-1]["samples_per_s"]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["svhn", "keypoints", "both"], default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rows", type=Path, default=None,
                        help="a folder of the model's Parquet rows (person_crops or digits) instead of generating them")
    parser.add_argument("--recipe", choices=["cpu", "coco"], default="cpu",
                        help="keypoints: the CPU recipe, or Simple Baselines' network and input (ResNet-50, 256x192, batch 128)")
    parser.add_argument("--keypoint-input", default=None, help="WxH model input for the keypoint model, e.g. 192x256")
    parser.add_argument("--backbone", default=None, help="keypoint backbone, e.g. resnet50")
    parser.add_argument("--batch-size", type=int, default=None, help="the global batch (the recipe's by default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the in-process runs (Ray workers use one per CPU they reserve)")
    parser.add_argument("--feed-workers", default="0", help="comma-separated feed sizes (0: inline, as CPU workers run it)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="as train-*'s --precision (auto: bf16 on GPUs and on CPUs with native bf16)")
    parser.add_argument("--feed-kind", choices=["process", "thread"], default="process",
                        help="the feed's workers: processes (as GPU workers run it) or threads")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    feed_sizes = [int(v) for v in args.feed_workers.split(",")]
    processes = args.feed_kind == "process"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({card}, {os.cpu_count()} CPU cores), torch {torch.__version__}")

    models = ["svhn", "keypoints"] if args.model == "both" else [args.model]
    for name in models:
        if name == "svhn":
            from pose.digit_task import DigitRecipe, DigitTask

            recipe = DigitRecipe(batch_size=args.batch_size or 128)

            def factory():
                return DigitTask(recipe)

            table, src = (parquet_rows(args.rows), None) if args.rows else svhn_rows(workdir, 4096)
            dataset = "svhn"
        else:
            from pose.keypoint_task import KeypointRecipe, KeypointTask

            overrides = {}
            if args.keypoint_input:
                w, h = (int(v) for v in args.keypoint_input.split("x"))
                overrides["input_size"] = (w, h)
            if args.backbone:
                overrides["backbone"] = args.backbone
            if args.batch_size:
                overrides["batch_size"] = args.batch_size
            recipe = dataclasses.replace(coco_network_recipe() if args.recipe == "coco" else KeypointRecipe(), **overrides)

            def factory():
                return KeypointTask(recipe)

            table, src = (parquet_rows(args.rows), None) if args.rows else keypoint_rows(workdir, 120)
            dataset = "coco"
        task = factory()
        batches = [b for b in batches_of(table, task.batch_size) if len(b[next(iter(b))]) == task.batch_size]
        if not batches:
            raise SystemExit(f"{name}: too few rows ({table.num_rows}) for one batch of {task.batch_size}")
        torch.set_num_threads(args.threads)
        ceiling = step_rate(task, batches, device, args.steps, reuse_inputs=True, precision=args.precision)
        print(f"{name}: step on in-memory tensors   {ceiling:9.1f} samples/s  (batch {task.batch_size}, "
              f"{training_precision(device, args.precision, task).describe()})", flush=True)
        for workers in feed_sizes:
            supply = prepare_rate(task, batches, workers, processes)
            feed = step_rate(task, batches, device, args.steps, reuse_inputs=False, feed_workers=workers, processes=processes,
                             precision=args.precision)
            kind = f"{workers:2d} {args.feed_kind}{'es' if processes else 's'}" if workers else "inline     "
            print(f"{name}: feed alone, {kind}      {supply:9.1f} samples/s", flush=True)
            print(f"{name}: pose-side loop, feed {kind} {feed:9.1f} samples/s  feed ratio {feed / ceiling:.2f}", flush=True)
        if args.ray and device.type == "cpu":
            rates = ray_rates(factory, src, dataset, workdir, [1, 2], precision=args.precision)
            for workers, rate in rates.items():
                print(f"{name}: Ray Train, {workers} worker(s)         {rate:9.1f} samples/s  feed ratio {rate / ceiling:.2f}")
            print(f"{name}: 2 workers / 1 worker         {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
