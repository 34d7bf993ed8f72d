"""SVHN digit classification: the recipe, the batch preparation and augmentation, the loss and
the evaluation — everything between a batch of `digits` rows and figures, without Ray.

Rows hold raw 32x32x3 uint8 pixels; augmentation runs on tensors on the training device, with a
generator seeded from (seed, epoch, rank), so a run is reproducible and the data feed costs little.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pose.metrics import accuracy
from pose.models.digits import DigitModelConfig, build_digit_model

# Per-channel statistics of SVHN's training set, as commonly used to normalise it.
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


@dataclass(frozen=True)
class DigitSchedule:
    """A recipe's length and learning rate resolved for one training set (`DigitRecipe.schedule`)."""

    epochs: int
    steps_per_epoch: int
    total_steps: int  # epochs * steps_per_epoch
    warmup_steps: int
    peak_lr: float


@dataclass(frozen=True)
class DigitRecipe:
    """The default recipe: WRN-10-2, SGD with Nesterov momentum, one-cycle cosine schedule, random
    translations and colour jitter (no flips: a mirrored 2 is not a 2).

    Its length is stated so that it holds for 2,000 digits and for SVHN's 73,257 (604,388 with
    `extra`): at least `epochs` epochs AND at least `min_steps` optimiser steps, so a small set's
    epochs are stretched (`schedule`). A network learns from its optimiser steps, not from its
    epochs: 8 epochs of 2,000 digits are about 60 steps, far too few to leave chance level, while
    8 epochs of SVHN are thousands. The warm-up is a number of steps for the same reason, and the
    peak learning rate follows the global batch linearly (`lr` is the rate at a batch of 256, as in
    Goyal et al., "Accurate, Large Minibatch SGD", 2017), so `--batch-size` alone changes nothing
    else that needs retuning. The rate (0.1 at the default batch of 128, twice Goyal et al.'s 0.1
    per 256) is high on purpose: a short run on a small set learns several times faster with it
    (docs/benchmarks.md), and a step count, not an epoch count, is what such a run has.
    """

    model: DigitModelConfig = field(default_factory=DigitModelConfig)
    epochs: int = 8  # at least this many epochs...
    min_steps: int = 2000  # ...and at least this many optimiser steps (0: exactly `epochs`)
    batch_size: int = 128  # global: 2 workers take 64 each
    lr: float = 0.2  # peak learning rate at a global batch of 256; scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100  # at most a quarter of the run
    label_smoothing: float = 0.05
    translate: int = 3  # pixels of random shift
    color_jitter: float = 0.3
    validation_every: int = 20  # rows of `train` with index % validation_every == 0 are held out

    def schedule(self, steps_per_epoch: int) -> DigitSchedule:
        """The run's length and peak learning rate for `steps_per_epoch` optimiser steps per epoch
        (`pose.engine.batch_plan`: training rows // global batch, whatever the worker count).

        1,900 rows at a global batch of 128: 14 steps per epoch, 143 epochs (2,002 steps).
        SVHN's 69,594 (train less the held-out rows): 543 steps per epoch, 8 epochs (4,344 steps).
        """
        if steps_per_epoch < 1:
            raise ValueError(f"an epoch needs at least one optimiser step, got {steps_per_epoch}")
        epochs = max(self.epochs, -(-self.min_steps // steps_per_epoch))
        total = epochs * steps_per_epoch
        return DigitSchedule(
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=max(1, min(self.warmup_steps, total // 4)),
            peak_lr=self.lr * self.batch_size / 256,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DigitRecipe:
        values = dict(values)
        values["model"] = DigitModelConfig.from_dict(values.get("model", {}))
        # Runs saved before the length was stated in steps carry a warm-up fraction instead.
        values.pop("warmup_fraction", None)
        return cls(**values)


def pixels_from_rows(pixels: list[bytes] | np.ndarray) -> np.ndarray:
    """The `pixels` column (raw bytes of 32x32x3 uint8) as an (N, 32, 32, 3) uint8 array."""
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 4:
        return pixels
    return np.stack([np.frombuffer(p, np.uint8).reshape(32, 32, 3) for p in pixels])


def to_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 on any device -> (N, 3, 32, 32) float, normalised."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(SVHN_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(SVHN_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, recipe: DigitRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random shifts (edge-replicated, as a crop of a wider street scene would be) and colour
    jitter on a normalised (N, 3, 32, 32) batch. `generator` lives on the CPU."""
    n = images.shape[0]
    if recipe.translate:
        pad = recipe.translate
        padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        rows = torch.arange(32).view(1, 32) + offsets[:, :1]
        cols = torch.arange(32).view(1, 32) + offsets[:, 1:]
        rows, cols = rows.to(images.device), cols.to(images.device)
        index = torch.arange(n, device=images.device).view(n, 1, 1)
        images = padded.permute(0, 2, 3, 1)[index, rows.view(n, 32, 1), cols.view(n, 1, 32)].permute(0, 3, 1, 2)
    if recipe.color_jitter:
        strength = recipe.color_jitter
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength
        images = images * contrast.to(images.device) + brightness.to(images.device)
        # Swap the colour channels of some digits: SVHN's colours say nothing about the digit.
        swap = torch.rand(n, generator=generator) < 0.2
        if swap.any():
            permuted = images[:, torch.randperm(3, generator=generator).to(images.device)]
            images = torch.where(swap.view(n, 1, 1, 1).to(images.device), permuted, images)
    return images


class DigitTask:
    """The SVHN task as the training runner (`jobs/train.py`) drives it."""

    name = "svhn"
    fixed_input_size = True  # every batch has one shape (cuDNN may tune for it)
    cpu_bf16 = True  # bf16 autocast and channels-last on CPUs with native bf16: twice as fast (pose.precision)
    table = "digits"
    train_splits = ("train", "extra")
    val_split = None  # SVHN has no validation split: rows of train are held out instead
    eval_batch_size = 512

    def __init__(self, recipe: DigitRecipe = DigitRecipe()):
        self.recipe = recipe
        self.batch_size = recipe.batch_size
        self.holdout_every = recipe.validation_every

    def config(self) -> dict:
        return {"task": self.name, "recipe": self.recipe.to_dict()}

    def build_model(self) -> nn.Module:
        return build_digit_model(self.recipe.model)

    def epochs_for(self, steps_per_epoch: int) -> int:
        """The epochs this recipe trains for with `steps_per_epoch` steps per epoch (the runner's
        loop length; `DigitRecipe.schedule`)."""
        return self.recipe.schedule(steps_per_epoch).epochs

    def build_optimizer(self, model: nn.Module, steps_per_epoch: int):
        recipe = self.recipe
        schedule = recipe.schedule(steps_per_epoch)
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=schedule.peak_lr,
            momentum=recipe.momentum,
            nesterov=True,
        )
        total = schedule.total_steps + 1  # +1: the schedule never runs past its end
        # OneCycleLR peaks at step pct_start * total - 1: the step after the warm-up's last.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=schedule.peak_lr,
            total_steps=total,
            pct_start=(schedule.warmup_steps + 1) / total,
            anneal_strategy="cos",
        )
        return optimizer, scheduler

    def prepare_batch(self, batch: dict, epoch: int = 0) -> dict:
        """The CPU half of a training batch (prepared inline: it is pixels already): pixels and labels
        as arrays. The augmentation runs on the device, in `device_inputs`."""
        return {"pixels": pixels_from_rows(batch["pixels"]), "label": np.asarray(batch["label"], dtype=np.int64)}

    def preparer(self):
        """`prepare_batch`, as the runner's feed takes it from every task (this task holds no weights)."""
        return self.prepare_batch

    def device_inputs(self, prepared: dict, device: torch.device, generator: torch.Generator) -> dict:
        """`prepare_batch`'s arrays -> augmented inputs on `device`; randomness from `generator`
        (seeded per epoch and worker by the runner)."""
        images = torch.from_numpy(prepared["pixels"]).to(device, non_blocking=True)
        labels = torch.as_tensor(prepared["label"], device=device)
        return {"images": augment(to_input(images), self.recipe, generator), "labels": labels}

    def loss(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        logits = model(inputs["images"])
        return F.cross_entropy(logits, inputs["labels"], label_smoothing=self.recipe.label_smoothing)

    def evaluator(self) -> DigitEvaluator:
        return DigitEvaluator()


class DigitEvaluator:
    """Accumulates predictions over a whole split."""

    def __init__(self):
        self.predicted: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, model: nn.Module, batch: dict, device: torch.device) -> None:
        images = torch.from_numpy(pixels_from_rows(batch["pixels"])).to(device)
        logits = model(to_input(images))
        self.predicted.append(logits.argmax(1).cpu().numpy())
        self.labels.append(np.asarray(batch["label"], dtype=np.int64))

    def result(self) -> dict:
        predicted = np.concatenate(self.predicted) if self.predicted else np.zeros(0, np.int64)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        overall, per_class, confusion = accuracy(predicted, labels)
        return {
            "accuracy": float(overall),
            "samples": int(len(labels)),
            "per_class": per_class.tolist(),
            "confusion": confusion.tolist(),
        }
