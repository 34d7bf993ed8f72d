"""Training benchmark: is the data feed ever the bottleneck?

Every figure is the training engine's own loop (`pose.engine.train_one_epoch`, the step Ray Train
workers run). For each model it prints samples/s of
  - the step alone, on one prepared batch already in memory (the ceiling),
  - the feed alone: rows -> the task's `preparer()` (decode, augment, targets) on `--feed-workers`
    processes (`pose.feed.BatchFeed`, as Ray Train GPU workers run it; 0: inline, as CPU workers run
    it), prepared batches drained as fast as they come, no step; per process too, and how many feed
    processes would supply `--target` samples/s and the step's ceiling,
  - the pose-side loop: the same feed ahead of the step (task.device_inputs -> step), in one
    process, no Ray,
  - the real thing: `pose-jobs train-*` on Ray Train with 1 and 2 workers (second epoch, so
    start-up is not counted; the same global batch on both),
and the feed ratio = fed loop / ceiling (goal >= 0.9).

Keypoint recipes (`--recipe`): the named recipes of `pose.recipes` (`keypoint_recipe`, as
`pose-jobs train-keypoints --recipe` resolves them). "cpu" warps the stored `person_crops` crops. The
reference recipes ("simple-baselines", "hrnet-w32", "hrnet-w48", "mmpose-td-hm") warp the ORIGINAL
image, so their rows are `person_crops` rows plus their image's encoded bytes (`image`), added as the
training job adds them (`jobs.detector_data.add_image_bytes`, from the `images` table's sources):
their feed decodes a whole image per person. "coco" is not a reference recipe: Simple Baselines'
network and input (ResNet-50, three 256-channel deconvolutions, 256x192, batch 128) inside pose-jobs'
own crop pipeline (the stored crops, pose-jobs' augmentation and targets), kept because the earlier H200
rows of docs/benchmarks.md were measured with it.

Where the rows come from:
  - by default, synthetic COCO made here with ingest's own shard function (no Ray), the image bytes
    read from the synthetic source folder;
  - `--data OUT`: an ingest output (`pose-jobs ingest`): its train rows, the image bytes read from its
    `images` table's sources (`jobs.detector_data.image_sources`), as train-keypoints reads them;
  - `--rows FOLDER`: Parquet files of rows exactly as the feed takes them (`person_crops` or `digits`,
    plus `image` for a reference recipe). With `--no-ray --rows` it imports nothing but `pose`, so it
    runs where neither Ray nor the job's storage libraries are installed (a lent GPU). `--save-rows
    FILE` writes the rows a run would use, image bytes included, to carry there.

    python benchmarks/train.py                      # both models, CPU recipe, with Ray
    python benchmarks/train.py --model keypoints --no-ray --recipe simple-baselines --batch-size 4 --steps 3
    # for a lent GPU: rows with their images' bytes, made here, then there:
    python benchmarks/train.py --model keypoints --recipe simple-baselines --images 200 \
        --save-rows out/bench-rows/sb.parquet
    python benchmarks/train.py --model keypoints --no-ray --device cuda --precision bf16 --rows out/bench-rows \
        --recipe simple-baselines --steps 40 --feed-workers 4,8,15
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
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
from pose.recipes import RECIPES


def step_rate(
    task,
    batches: list[dict],
    device: torch.device,
    steps: int,
    *,
    reuse_inputs: bool,
    feed_workers: int = 0,
    processes: bool = True,
    precision: str = "auto",
) -> float:
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
            result = train_one_epoch(
                model,
                task,
                prepared,
                optimizer,
                scheduler,
                device=device,
                precision=arithmetic,
                max_steps=count,
                generator=generator,
            )
        return result.samples_per_s


def prepare_rate(task, batches: list[dict], workers: int, processes: bool = True) -> float:
    """samples/s of the task's `preparer()` alone on `workers` processes (or threads; 0: inline):
    what the feed can supply, batches taken as soon as they are ready. Timed after the feed has
    started and prepared its first batches."""
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
    """`--recipe coco`: Simple Baselines' network and input (ResNet-50, three 256-channel deconvolutions,
    256x192) at its global batch of 128, inside pose-jobs' own crop pipeline (the stored crops, pose-jobs'
    full augmentation and targets): the GPU step of docs/benchmarks.md's earlier H200 rows, not the
    simple-baselines recipe. Its optimiser settings do not matter for samples/s."""
    from pose.augment import AugmentConfig
    from pose.keypoint_task import KeypointRecipe

    return KeypointRecipe(
        backbone="resnet50",
        backbone_stages=4,
        deconv_layers=3,
        deconv_channels=256,
        input_size=(192, 256),
        batch_size=128,
        augment=AugmentConfig(input_size=(192, 256)),
    )


def benchmark_recipe(
    name: str, backbone: str | None, input_size: str | None, codec: str | None, batch_size: int | None
):
    """The keypoint recipe `--recipe` names, resolved as `pose-jobs train-keypoints` resolves it
    (`pose.recipes.keypoint_recipe`), or the "coco" network of `coco_network_recipe`."""
    from dataclasses import replace

    from pose.recipes import RecipeError, keypoint_recipe

    if name == "coco":
        recipe = coco_network_recipe()
        if backbone:
            recipe = replace(recipe, backbone=backbone)
        if input_size:
            width, height = (int(v) for v in input_size.lower().split("x"))
            recipe = replace(recipe, input_size=(width, height))
        return recipe.with_batch_size(batch_size) if batch_size else recipe
    try:
        return keypoint_recipe(name, backbone=backbone, input_size=input_size, codec=codec, batch_size=batch_size)
    except RecipeError as error:
        raise SystemExit(f"--recipe {name}: {error}") from None


def parquet_rows(folder: Path) -> pa.Table:
    """Every Parquet file under `folder` (or the file `folder`), as one table."""
    import pyarrow.parquet as pq

    files = [folder] if folder.is_file() else sorted(folder.rglob("*.parquet"))
    if not files:
        raise SystemExit(f"{folder}: no Parquet files")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def save_rows(table: pa.Table, path: Path) -> None:
    """Write `table` to one Parquet file. A person's `image` repeats its image's bytes once per person:
    dictionary pages large enough to hold every image store each image once."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, dictionary_pagesize_limit=1 << 30)


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


def keypoint_rows(workdir: Path, images: int, with_images: bool) -> tuple[pa.Table, Path]:
    """Synthetic COCO as `person_crops` rows, made with ingest's own shard function (no Ray); with
    `with_images`, each row with its original image's bytes (`image`), read from the source folder
    as the training job reads them (`jobs.detector_data.add_image_bytes`)."""
    from jobs.detector_data import add_image_bytes
    from jobs.ingest import coco_shard_tables, plan_coco
    from jobs.storage import StorageOptions
    from pose import schema
    from pose.crops import CropSettings
    from pose.synth.people import write_coco

    src = workdir / "coco-src"
    written = src / "annotations" / "person_keypoints_train2017.json"
    if not written.exists() or len(json.loads(written.read_text())["images"]) < images:
        write_coco(src, split="train", images=images, seed=0)
        write_coco(src, split="val", images=max(20, images // 10), seed=1)
    plan = plan_coco(str(src), StorageOptions(), ("train",), shard_images=images)
    tables = coco_shard_tables(plan.shards[0], StorageOptions(), CropSettings())
    rows = pa.Table.from_pylist(tables["person_crops"], schema=schema.PERSON_CROPS)
    if with_images:
        sources = {int(row["image_id"]): row["source"] for row in tables["images"]}
        rows = add_image_bytes(rows, sources, StorageOptions())
    return rows, src


def ingested_rows(data: str, task, with_images: bool) -> pa.Table:
    """The train rows of `task.table` in the ingest output `data`; with `with_images`, each with its
    original image's bytes (`image`), read from the `images` table's sources as train-keypoints does."""
    from jobs.datasets import read_table
    from jobs.detector_data import add_image_bytes, image_sources
    from jobs.storage import StorageOptions

    options = StorageOptions()
    rows = read_table(data, task.table, task.train_splits, options)
    if with_images:
        rows = add_image_bytes(rows, image_sources(data, task.train_splits, options), options)
    return rows


def ray_rates(
    task_factory,
    ingested: str,
    workdir: Path,
    workers_list: list[int],
    epochs: int = 2,
    precision: str = "auto",
    with_images: bool = False,
) -> dict[int, float]:
    """samples/s of the last epoch of `pose-jobs train-*` (Ray Train) on the ingest output `ingested`
    for each worker count; `with_images`: the rows get their images' bytes, as train-keypoints gives
    them to a reference recipe."""
    from jobs.runtime import init_ray
    from jobs.train import TrainSettings, run_training

    init_ray()
    prepare_rows = None
    if with_images:
        from jobs.detector_data import image_sources, rows_with_images
        from jobs.storage import StorageOptions

        sources = image_sources(ingested, ("train", "val"), StorageOptions())
        prepare_rows = functools.partial(rows_with_images, sources=sources, options=StorageOptions())
    rates = {}
    for workers in workers_list:
        out = Path(tempfile.mkdtemp(prefix=f"run-{workers}w-", dir=workdir))
        settings = TrainSettings(data=ingested, out=str(out), workers=workers, precision=precision)
        run_training(task_factory(), settings, epochs, prepare_rows=prepare_rows)
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates[workers] = lines[-1]["samples_per_s"]
    return rates


def feed_processes_for(rate: float, per_process: float) -> int:
    """Feed processes that supply `rate` samples/s at `per_process` samples/s each."""
    return max(1, math.ceil(rate / per_process))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["svhn", "keypoints", "both"], default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--ray",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time `pose-jobs train-*` on Ray Train with 1 and 2 workers (CPU only)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--data", default=None, help="an ingest output (pose-jobs ingest) to read the train rows from")
    parser.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="a folder (or file) of Parquet rows as the feed takes them (person_crops or digits; plus `image` for a "
        "reference recipe) instead of generating them",
    )
    parser.add_argument(
        "--images", type=int, default=120, help="synthetic COCO images to generate (without --data or --rows)"
    )
    parser.add_argument(
        "--save-rows",
        type=Path,
        default=None,
        help="write the rows this run would use (with `image` for a reference recipe) to this Parquet file and exit",
    )
    parser.add_argument(
        "--recipe",
        choices=[*RECIPES, "coco"],
        default="cpu",
        help="keypoints: a recipe of pose-jobs train-keypoints (pose.recipes), or coco: Simple Baselines' network in "
        "pose-jobs' crop pipeline (not the simple-baselines recipe)",
    )
    parser.add_argument(
        "--input-size",
        default=None,
        help="keypoint input as train-keypoints takes it: cpu, coco WxH (96x128); reference recipes 256x192 or 384x288",
    )
    parser.add_argument("--backbone", default=None, help="keypoint backbone, e.g. resnet50 (default: the recipe's)")
    parser.add_argument("--codec", default=None, help="mmpose-td-hm's codec: msra, dark or udp")
    parser.add_argument("--batch-size", type=int, default=None, help="the global batch (the recipe's by default)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the in-process runs (Ray workers use one per CPU they reserve)",
    )
    parser.add_argument(
        "--feed-workers", default="0", help="comma-separated feed sizes (0: inline, as CPU workers run it)"
    )
    parser.add_argument(
        "--target", type=float, default=1500.0, help="samples/s the feed-process estimate aims at (the GPU goal)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="as train-*'s --precision (auto: bf16 on GPUs and on CPUs with native bf16)",
    )
    parser.add_argument(
        "--feed-kind",
        choices=["process", "thread"],
        default="process",
        help="the feed's workers: processes (as GPU workers run it) or threads",
    )
    args = parser.parse_args()
    if args.data and args.rows:
        parser.error("give --data or --rows, not both")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    feed_sizes = [int(v) for v in args.feed_workers.split(",")]
    processes = args.feed_kind == "process"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {device} ({card}, {os.cpu_count()} CPU cores), torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )

    models = ["svhn", "keypoints"] if args.model == "both" else [args.model]
    for name in models:
        src, with_images = None, False
        if name == "svhn":
            from pose.digit_task import DigitRecipe, DigitTask

            recipe = DigitRecipe(batch_size=args.batch_size or 128)
            label, factory = "svhn", functools.partial(DigitTask, recipe)

            if not (args.data or args.rows):
                table, src = svhn_rows(workdir, 4096)
        else:
            from pose.keypoint_task import KeypointTask

            recipe = benchmark_recipe(args.recipe, args.backbone, args.input_size, args.codec, args.batch_size)
            with_images = recipe.framework != "pose-jobs"  # the reference recipes warp the original image
            label, factory = f"keypoints {args.recipe}", functools.partial(KeypointTask, recipe)

            if not (args.data or args.rows):
                table, src = keypoint_rows(workdir, args.images, with_images)
        task = factory()
        if args.data:
            table = ingested_rows(args.data, task, with_images)
        elif args.rows:
            table = parquet_rows(args.rows)
            if with_images and "image" not in table.column_names:
                raise SystemExit(
                    f"{args.rows}: rows without `image` (their original image's bytes), which --recipe {args.recipe} "
                    f"warps; write them with --save-rows, or give --data the ingest output"
                )
        if args.save_rows:
            save_rows(table, args.save_rows)
            print(
                f"{label}: {table.num_rows} rows -> {args.save_rows} ({args.save_rows.stat().st_size / 2**20:.1f} MiB)"
            )
            continue
        batches = [b for b in batches_of(table, task.batch_size) if len(b[next(iter(b))]) == task.batch_size]
        if not batches:
            raise SystemExit(f"{name}: too few rows ({table.num_rows}) for one batch of {task.batch_size}")
        torch.set_num_threads(args.threads)
        ceiling = step_rate(task, batches, device, args.steps, reuse_inputs=True, precision=args.precision)
        feed_of = "rows + their original images" if with_images else ("stored crops" if name == "keypoints" else "rows")
        print(
            f"{label}: step on in-memory tensors      {ceiling:9.1f} samples/s  (batch {task.batch_size}, "
            f"{training_precision(device, args.precision, task).describe()}; feed: {table.num_rows} {feed_of})",
            flush=True,
        )
        per_process, last_workers = None, 0
        for workers in feed_sizes:
            supply = prepare_rate(task, batches, workers, processes)
            fed = step_rate(
                task,
                batches,
                device,
                args.steps,
                reuse_inputs=False,
                feed_workers=workers,
                processes=processes,
                precision=args.precision,
            )
            kind = f"{workers:2d} {args.feed_kind}{'es' if processes else 's'}" if workers else "inline     "
            per_process, last_workers = supply / max(workers, 1), workers
            print(
                f"{label}: feed alone, {kind}         {supply:9.1f} samples/s  "
                f"({per_process:.1f} per {args.feed_kind})",
                flush=True,
            )
            print(
                f"{label}: step fed by {kind}        {fed:9.1f} samples/s  feed ratio {fed / ceiling:.2f}", flush=True
            )
        if per_process and (processes or last_workers == 0):  # threads share one process: no per-process figure
            print(
                f"{label}: feed processes for {args.target:,.0f} samples/s: "
                f"about {feed_processes_for(args.target, per_process)}; "
                f"for this step's {ceiling:,.1f}: about {feed_processes_for(ceiling, per_process)} "
                f"(at {per_process:.1f} samples/s per process, the last feed size's)",
                flush=True,
            )
        if args.ray and device.type == "cpu":
            if args.rows:
                print(f"{name}: Ray Train not timed: it needs an ingest output (--data, or generated rows), not --rows")
                continue
            ingested = args.data
            if ingested is None:
                from jobs.ingest import ingest

                ingested = str(workdir / f"{name}-ingested")
                ingest("svhn" if name == "svhn" else "coco", str(src), ingested, progress=False)
            rates = ray_rates(factory, ingested, workdir, [1, 2], precision=args.precision, with_images=with_images)
            for workers, rate in rates.items():
                print(
                    f"{label}: Ray Train, {workers} worker(s)            {rate:9.1f} samples/s  "
                    f"feed ratio {rate / ceiling:.2f}"
                )
            print(f"{label}: 2 workers / 1 worker            {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
