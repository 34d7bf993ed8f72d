"""Keypoint recipe trial: a few epochs of a `KeypointRecipe` variant without Ray, PCK after each.

For comparing recipe changes per minute of training on one machine before a full run: the
training engine's epoch and evaluation (`pose.engine`, the step Ray Train workers run) over the
ingested `person_crops` held in memory, shuffled per epoch, one batch of the recipe's (global) size
per step (one process, torch on `--threads` threads), in the runner's precision (`--precision`).
PCK is the keypoint task's (`pose.metrics.heatmap_pck`, Simple Baselines' accuracy at 0.5), with
the recipe's flip test, on the first `--val` validation persons.

    python benchmarks/keypoint_recipe.py out/coco --epochs 4                       # the default recipe
    python benchmarks/keypoint_recipe.py out/coco --epochs 4 backbone_stages=3 deconv_layers=2 skips=true
    python benchmarks/keypoint_recipe.py out/coco --epochs 4 input_size=48x64 deconv_layers=2

Overrides are `field=value` for `KeypointRecipe` fields (sizes as WxH, booleans true/false);
`--epochs` is the length of the cosine schedule, so a 4-epoch trial anneals fully.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jobs.datasets import read_table
from pose.engine import evaluate, train_one_epoch
from pose.keypoint_task import KeypointRecipe, KeypointTask
from pose.precision import PRECISIONS, training_precision


def recipe_value(name: str, text: str):
    """A `KeypointRecipe` field's value from its command-line text."""
    default = getattr(KeypointRecipe(), name)
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"{name}={text}: use true or false")
        return text.lower() == "true"
    if isinstance(default, tuple):
        return tuple(int(v) for v in text.lower().split("x"))
    return type(default)(text)


def rows(table: pa.Table) -> dict:
    return {k: (v if k == "crop" else np.asarray(v)) for k, v in table.to_pydict().items()}


def training_batches(task: KeypointTask, train: pa.Table, order: np.ndarray, epoch: int) -> Iterator[dict]:
    """The epoch's prepared batches: rows in `order`, `task.batch_size` at a time, the last partial one dropped."""
    size = task.batch_size
    for start in range(0, len(order) - size + 1, size):
        yield task.prepare_batch(rows(train.take(order[start : start + size])), epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="an ingested COCO DEST (pose-jobs ingest coco)")
    parser.add_argument("overrides", nargs="*", help="KeypointRecipe field=value")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--val", type=int, default=600, help="validation persons scored after each epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_intermixed_args()

    changes = {}
    for item in args.overrides:
        name, _, text = item.partition("=")
        if name not in KeypointRecipe.__dataclass_fields__ or not text:
            raise SystemExit(f"{item!r}: expected field=value with a KeypointRecipe field")
        changes[name] = recipe_value(name, text)
    recipe = dataclasses.replace(KeypointRecipe(), epochs=args.epochs, **changes)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val = (read_table(str(args.data), "person_crops", (split,)) for split in ("train", "val"))
    val = val.slice(0, args.val)

    task = KeypointTask(recipe, seed=args.seed)
    device = torch.device("cpu")
    arithmetic = training_precision(device, args.precision, task)
    model = arithmetic.prepare(task.build_model())
    optimizer, scheduler = task.build_optimizer(model, train.num_rows // recipe.batch_size)
    order_rng = np.random.default_rng(args.seed)
    print(
        f"{', '.join(f'{k}={v}' for k, v in changes.items()) or 'default recipe'}; {arithmetic.describe()}; "
        f"{train.num_rows} training crops, {val.num_rows} validation persons",
        flush=True,
    )
    started = time.perf_counter()
    for epoch in range(recipe.epochs):
        batches = training_batches(task, train, order_rng.permutation(train.num_rows), epoch)
        result = train_one_epoch(model, task, batches, optimizer, scheduler, device=device, precision=arithmetic)
        val_batches = (rows(val.slice(start, 64)) for start in range(0, val.num_rows, 64))
        figures = evaluate(model, task, val_batches, device=device, precision=arithmetic)
        print(
            f"epoch {epoch + 1}/{recipe.epochs}  loss {result.loss:.6f}  PCK {figures['pck']:.4f}  "
            f"{result.samples_per_s:.0f} samples/s  {(time.perf_counter() - started) / 60:.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
