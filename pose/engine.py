"""The training engine: one epoch of optimiser steps and one evaluation pass, for any task, without Ray.

As torchvision's `references/detection/engine.py` does, training and evaluation are two plain
functions around a *task* (`Task` below: `pose.digit_task.DigitTask`, `pose.keypoint_task.KeypointTask`,
`pose.detector_task.DetectorTask`), which knows its model, optimiser, batches and loss. Whoever
calls them owns the data and the processes: `jobs/train.py` on every Ray Train worker (shards,
feed, all-reduce, checkpoints), `benchmarks/train.py` and `benchmarks/keypoint_recipe.py` in one
process, a test on a list of batches.

The batch arithmetic lives here too (`batch_plan`): a task's `batch_size` is the *global* batch,
the number the published recipes state (Simple Baselines: 32 per GPU x 4 GPUs = 128; MMPose 1.x:
64 x 8 = 512), which N workers share, batch / N each, for the same number of optimiser steps per
epoch whatever N is, so the learning-rate schedule does not depend on the worker count.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from pose.precision import Precision


class Evaluator(Protocol):
    """Validation figures over a whole split, fed batch by batch (`Task.evaluator`)."""

    def update(self, model: torch.nn.Module, batch: dict, device: torch.device) -> None:
        """Predict one batch of *rows* (a dict of columns, numpy arrays or lists, as Ray Data's
        `iter_batches(batch_format="numpy")` gives them) with `model` (in eval mode, gradients off,
        under the training precision's autocast) and remember what the figures need."""
        ...

    def result(self) -> dict:
        """The figures over every batch seen: name -> number (the runner logs the int and float
        values as `val_<name>`), plus anything else the task reports (lists, counts)."""
        ...


class Task(Protocol):
    """What a task gives the training engine and the runner (`jobs/train.py`).

    Batches pass through three forms: *rows* (a dict of columns from the task's Parquet `table`),
    *prepared* (`prepare_batch`: the CPU half, numpy arrays or tensors whose first dimension is the
    batch; picklable, since feed processes make it) and *inputs* (`device_inputs`: tensors on the
    device). The runner reads `holdout_every`, `fixed_input_size`, `feed_ahead` and `cpu_bf16`
    with `getattr(task, name, 0 or False)`, so a task states only those it needs.
    """

    name: str
    """Short name for logs and run folders ("svhn", "keypoints", "detector")."""
    table: str
    """The Parquet table of an ingested DEST that holds its rows ("digits", "person_crops", "images")."""
    train_splits: tuple[str, ...]
    """The table's splits trained on."""
    val_split: str | None
    """The split validated on; None: rows of the training splits held out (`holdout_every`)."""
    holdout_every: int
    """Optional: rows whose `index` is a multiple of it are held out of training for validation (0: none)."""
    batch_size: int
    """The GLOBAL batch: rows per optimiser step over all workers together (`batch_plan`)."""
    eval_batch_size: int
    """Rows per `Evaluator.update` call (validation runs on one worker)."""
    fixed_input_size: bool
    """Optional: every batch has one shape, so cuDNN may tune its kernels for it."""
    feed_ahead: bool
    """Optional: preparing a batch costs CPU time (decoding, augmentation): on GPUs it runs on feed processes."""
    cpu_bf16: bool
    """Optional: bf16 autocast and channels-last pay off on CPUs with native bf16 (`pose.precision`)."""

    def config(self) -> dict:
        """JSON-ready description of the task (name, recipe, model), saved in checkpoints and model.json."""
        ...

    def build_model(self) -> torch.nn.Module:
        """A new model, on the CPU, with the task's initial weights."""
        ...

    def build_optimizer(
        self, model: torch.nn.Module, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser over `model`'s parameters and its schedule, stepped once per optimiser
        step; `steps_per_epoch` is `BatchPlan.steps_per_epoch` (the same for any worker count)."""
        ...

    def prepare_batch(self, batch: dict, epoch: int = 0) -> dict:
        """Rows -> a prepared batch (decode, augment, targets): the CPU half of a training step.
        Randomness comes from the rows and `epoch`, so a batch prepares the same anywhere."""
        ...

    def preparer(self) -> Callable[[dict, int], dict]:
        """`prepare_batch` as a picklable function of (rows, epoch) that does not carry the task
        (which may hold weight files), for `pose.feed.BatchFeed`'s processes."""
        ...

    def device_inputs(self, prepared: dict, device: torch.device, generator: torch.Generator | None = None) -> dict:
        """A prepared batch -> the tensors `loss` takes, on `device`; device-side augmentation
        draws from `generator` (a CPU generator the caller seeds per epoch and worker)."""
        ...

    def loss(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """The scalar training loss of one batch of inputs (a 0-d tensor on the device), mean over the batch."""
        ...

    def evaluator(self) -> Evaluator:
        """A fresh `Evaluator` for one validation pass."""
        ...


# ------------------------------------------------------------------------------------------------
# The global batch on N workers


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch is cut: `workers` workers take `worker_batch` rows each per step, together
    one `global_batch`, for `steps_per_epoch` optimiser steps."""

    global_batch: int
    workers: int
    worker_batch: int
    steps_per_epoch: int

    def describe(self) -> str:
        return (
            f"{self.workers} worker(s) x {self.worker_batch} = global batch {self.global_batch}, "
            f"{self.steps_per_epoch} steps/epoch"
        )


def batch_plan(batch_size: int, workers: int, rows: int) -> BatchPlan:
    """The plan for a GLOBAL batch of `batch_size` rows on `workers` workers over `rows` training rows.

    Every worker takes batch_size / workers rows per step and the epoch has rows // batch_size
    steps, whatever the worker count (an equal split of the rows gives each worker at least that
    many batches of its size). Raises ValueError, naming the numbers and what would work, when the
    batch does not divide among the workers or the rows cannot fill one batch.

    128 rows a step on 2 workers over 60,000 rows: 64 each, 468 steps.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch size {batch_size} and worker count {workers} must both be at least 1")
    if batch_size % workers:
        below, above = batch_size // workers * workers, (batch_size // workers + 1) * workers
        sizes = f"{below} or {above}" if below else f"{above}"
        counts = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        raise ValueError(
            f"global batch {batch_size} does not divide among {workers} workers: "
            f"batch sizes {sizes} (multiples of {workers}) "
            f"or worker counts {', '.join(map(str, counts))} (divisors of {batch_size}) would work"
        )
    if rows < batch_size:
        raise ValueError(
            f"{rows} training rows cannot fill one global batch of {batch_size}; use a batch of at most {rows} rows"
        )
    return BatchPlan(
        global_batch=batch_size, workers=workers, worker_batch=batch_size // workers, steps_per_epoch=rows // batch_size
    )


# ------------------------------------------------------------------------------------------------
# Training and evaluation


@dataclass(frozen=True)
class EpochResult:
    """What one `train_one_epoch` did: `loss_sum` is the sum of the steps' losses, a 0-d float32
    tensor still on the device (summing it there spares a device sync per step; an all-reduce
    takes it as it is)."""

    loss_sum: torch.Tensor
    steps: int
    samples: int
    seconds: float

    @property
    def loss(self) -> float:
        """The mean loss of the epoch's steps (a device sync)."""
        return self.loss_sum.item() / max(self.steps, 1)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_one_epoch(
    model: torch.nn.Module,
    task: Task,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    device: torch.device | str,
    precision: Precision = Precision(),
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> EpochResult:
    """One pass of optimiser steps over `batches` (prepared batches: `task.prepare_batch` outputs),
    at most `max_steps` of them; no batch after the last step is drawn from the iterator.

    Each step: `task.device_inputs` -> forward and `task.loss` under `precision`'s autocast ->
    backward -> optimiser step -> `scheduler.step()` (the schedules count optimiser steps). `model`
    is put in train mode and should already be on `device` in `precision`'s memory format (and
    wrapped for DDP by the caller, who also all-reduces the result across workers).

    A non-finite loss raises FloatingPointError naming the step. The check reads the previous
    step's loss, which the device finished long ago, so on a GPU it never waits for the step just
    queued; the step after the bad one runs in vain, and training stops there.
    """
    device = torch.device(device)
    model.train()
    loss_sum = torch.zeros((), device=device)
    steps, samples, started = 0, 0, time.perf_counter()
    previous = None  # (step, loss) not yet checked

    def check(step: int, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{task.name}: loss is {loss.item()} at step {step + 1} of the epoch; "
                "stopping training (lower the learning rate?)"
            )

    for step, prepared in enumerate(itertools.islice(batches, max_steps)):
        inputs = task.device_inputs(prepared, device, generator)
        with precision.autocast(device):
            loss = task.loss(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if previous is not None:
            check(*previous)
        previous = (step, loss.detach())
        loss_sum += previous[1].float()
        steps += 1
        samples += len(next(iter(prepared.values())))  # a prepared batch's values all start with the batch dimension
    if previous is not None:
        check(*previous)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so that `seconds` includes the queued device work
    return EpochResult(loss_sum=loss_sum, steps=steps, samples=samples, seconds=time.perf_counter() - started)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    batches: Iterable[dict],
    *,
    device: torch.device | str,
    precision: Precision = Precision(),
) -> dict:
    """One validation pass: `model` in eval mode, a fresh `task.evaluator()` fed every batch of
    rows under `precision`'s autocast (validation in the training step's arithmetic); returns its
    `result()`. Give the plain model, not a DDP wrapper: only one worker evaluates."""
    device = torch.device(device)
    model.eval()
    evaluator = task.evaluator()
    for batch in batches:
        with precision.autocast(device):
            evaluator.update(model, batch, device)
    return evaluator.result()
