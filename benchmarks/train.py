"""Training benchmark: is the data feed ever the bottleneck?

For each model it prints samples/s of
  - the step alone, on one batch of tensors already in memory (the ceiling),
  - the pose-side loop: Parquet rows -> task.training_inputs (decode, augment, targets) -> step,
    in one process, no Ray (this part also runs on a machine without Ray, e.g. a lent GPU),
  - the real thing: `pose-jobs train-*` on Ray Train with 1 and 2 workers (second epoch, so
    start-up is not counted),
and the feed ratio = real loop / ceiling (goal >= 0.9).

    python benchmarks/train.py                      # both models, CPU, with Ray
    python benchmarks/train.py --model svhn --no-ray --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pyarrow as pa
import torch

from jobs.train import batches_of


def step_rate(task, batches: list[dict], device: torch.device, steps: int, *, reuse_inputs: bool) -> float:
    """samples/s of `steps` optimiser steps; inputs prepared once (ceiling) or per batch (feed)."""
    torch.manual_seed(0)
    model = task.build_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = task.build_optimizer(model, steps + 10)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    fixed = task.training_inputs(batches[0], device, generator, 0)

    def one_step(index: int) -> None:
        inputs = fixed if reuse_inputs else task.training_inputs(batches[index % len(batches)], device, generator, 0)
        with autocast:
            loss = task.loss(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    for index in range(3):  # warm-up: allocator, cudnn autotuning
        one_step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(steps):
        one_step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * task.batch_size / (time.perf_counter() - started)


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


def ray_rates(task_factory, src: Path, dataset: str, workdir: Path, workers_list: list[int], epochs: int = 2) -> dict[int, float]:
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
        run_training(task, TrainSettings(data=str(ingested), out=str(out), workers=workers), epochs)
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
    parser.add_argument("--keypoint-input", default=None, help="WxH model input for the keypoint model, e.g. 192x256")
    parser.add_argument("--backbone", default=None, help="keypoint backbone, e.g. resnet50")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the in-process runs (Ray workers use one per CPU they reserve)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{os.cpu_count()} CPU cores'}), torch {torch.__version__}")

    models = ["svhn", "keypoints"] if args.model == "both" else [args.model]
    for name in models:
        if name == "svhn":
            from pose.digit_task import DigitRecipe, DigitTask

            recipe = DigitRecipe(batch_size=args.batch_size or 128)

            def factory():
                return DigitTask(recipe)

            table, src = svhn_rows(workdir, 4096)
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
            recipe = KeypointRecipe(**overrides)

            def factory():
                return KeypointTask(recipe)

            table, src = keypoint_rows(workdir, 120)
            dataset = "coco"
        task = factory()
        batches = [b for b in batches_of(table, task.batch_size) if len(b[next(iter(b))]) == task.batch_size]
        if not batches:
            raise SystemExit(f"{name}: too few rows ({table.num_rows}) for one batch of {task.batch_size}")
        torch.set_num_threads(args.threads)
        ceiling = step_rate(task, batches, device, args.steps, reuse_inputs=True)
        feed = step_rate(task, batches, device, args.steps, reuse_inputs=False)
        print(f"{name}: step on in-memory tensors   {ceiling:9.1f} samples/s  (batch {task.batch_size})")
        print(f"{name}: pose-side loop, no Ray       {feed:9.1f} samples/s  feed ratio {feed / ceiling:.2f}")
        if args.ray and device.type == "cpu":
            rates = ray_rates(factory, src, dataset, workdir, [1, 2])
            for workers, rate in rates.items():
                print(f"{name}: Ray Train, {workers} worker(s)         {rate:9.1f} samples/s  feed ratio {rate / ceiling:.2f}")
            print(f"{name}: 2 workers / 1 worker         {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
