"""The training engine on a toy task without Ray: steps, the loss check, evaluation, and the
global batch's plan on N workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.engine import BatchPlan, batch_plan, evaluate, train_one_epoch
from pose.precision import Precision


class LineTask:
    """Fit y = 3 x0 - 2 x1 + 1 with one linear layer: learnable in a few SGD steps."""

    name = "line"
    batch_size = 8
    eval_batch_size = 8

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Linear(2, 1)

    def build_optimizer(self, model, steps_per_epoch: int):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def prepare_batch(self, batch: dict, epoch: int = 0) -> dict:
        return batch

    def device_inputs(self, prepared: dict, device, generator=None) -> dict:
        return {key: torch.as_tensor(value, dtype=torch.float32).to(device) for key, value in prepared.items()}

    def loss(self, model, inputs) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(inputs["x"]).squeeze(1), inputs["y"])

    def evaluator(self):
        return LineEvaluator()


class LineEvaluator:
    def __init__(self):
        self.errors, self.modes, self.grad_enabled = [], [], []

    def update(self, model, batch: dict, device) -> None:
        self.modes.append(model.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        predicted = model(torch.as_tensor(batch["x"], dtype=torch.float32)).squeeze(1)
        self.errors.append((predicted - torch.as_tensor(batch["y"], dtype=torch.float32)).abs())

    def result(self) -> dict:
        errors = torch.cat(self.errors)
        return {
            "mae": float(errors.mean()),
            "samples": len(errors),
            "train_mode": any(self.modes),
            "grad": any(self.grad_enabled),
        }


def line_batches(count: int, size: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x = rng.normal(size=(size, 2)).astype(np.float32)
        batches.append({"x": x, "y": 3 * x[:, 0] - 2 * x[:, 1] + 1})
    return batches


def test_loss_falls_and_the_schedule_counts_optimiser_steps():
    torch.manual_seed(0)
    task = LineTask()
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, 10)
    first = train_one_epoch(model, task, line_batches(10), optimizer, scheduler, device="cpu")
    second = train_one_epoch(model, task, line_batches(10, seed=1), optimizer, scheduler, device="cpu")
    assert first.steps == 10 and first.samples == 80 and first.seconds > 0 and first.samples_per_s > 0
    assert first.loss_sum.shape == () and first.loss_sum.dtype == torch.float32
    assert second.loss < first.loss / 4
    assert scheduler.last_epoch == 20  # stepped once per optimiser step
    assert model.training


def test_bf16_autocast_trains_with_float32_weights():
    torch.manual_seed(0)
    task = LineTask()
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, 10)
    result = train_one_epoch(
        model, task, line_batches(10), optimizer, scheduler, device="cpu", precision=Precision(torch.bfloat16)
    )
    assert result.steps == 10 and np.isfinite(result.loss)
    assert model.weight.dtype == torch.float32


def test_max_steps_bounds_the_epoch_and_draws_no_batch_beyond_it():
    task = LineTask()
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, 5)
    batches = iter(line_batches(5))
    result = train_one_epoch(model, task, batches, optimizer, scheduler, device="cpu", max_steps=3)
    assert result.steps == 3 and result.samples == 24 and scheduler.last_epoch == 3
    assert len(list(batches)) == 2, "the 4th and 5th batches are still there for the caller"
    # A short iterator ends the epoch early: the caller sees fewer steps than it asked for.
    assert train_one_epoch(model, task, line_batches(2), optimizer, None, device="cpu", max_steps=3).steps == 2


def test_a_non_finite_loss_stops_training_naming_the_step():
    task = LineTask()
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, 5)
    batches = line_batches(5)
    batches[2]["y"] = np.full_like(batches[2]["y"], np.nan)
    with pytest.raises(FloatingPointError, match="line: loss is nan at step 3 of the epoch"):
        train_one_epoch(model, task, batches, optimizer, scheduler, device="cpu")
    # The bad step is also found when it is the epoch's last.
    with pytest.raises(FloatingPointError, match="at step 1 "):
        train_one_epoch(model, task, batches[2:3], optimizer, scheduler, device="cpu")


def test_evaluate_feeds_every_batch_in_eval_mode_without_gradients():
    task = LineTask()
    model = task.build_model()
    model.train()
    figures = evaluate(model, task, line_batches(3, size=5), device="cpu")
    assert figures["samples"] == 15 and figures["mae"] > 0
    assert not figures["train_mode"] and not figures["grad"]
    assert not model.training


def test_batch_plan_shares_the_global_batch_and_keeps_the_steps():
    assert batch_plan(128, 1, 1000) == BatchPlan(global_batch=128, workers=1, worker_batch=128, steps_per_epoch=7)
    assert batch_plan(128, 2, 1000) == BatchPlan(global_batch=128, workers=2, worker_batch=64, steps_per_epoch=7)
    assert batch_plan(128, 128, 128) == BatchPlan(global_batch=128, workers=128, worker_batch=1, steps_per_epoch=1)
    assert batch_plan(512, 8, 149_813).steps_per_epoch == 292  # MMPose: 64 x 8 on COCO's 149,813 training persons
    assert batch_plan(128, 2, 60_000).describe() == "2 worker(s) x 64 = global batch 128, 468 steps/epoch"


def test_batch_plan_refuses_what_does_not_divide_or_fill_a_batch():
    with pytest.raises(
        ValueError,
        match=r"global batch 128 does not divide among 3 workers: batch sizes 126 or 129 "
        r"\(multiples of 3\) or worker counts 1, 2, 4, 8, 16, 32, 64, 128 \(divisors of 128\)",
    ):
        batch_plan(128, 3, 1000)
    with pytest.raises(ValueError, match=r"batch sizes 4 \(multiples of 4\) or worker counts 1, 2"):
        batch_plan(2, 4, 1000)  # more workers than rows in the batch
    with pytest.raises(ValueError, match="100 training rows cannot fill one global batch of 128"):
        batch_plan(128, 2, 100)
    with pytest.raises(ValueError, match="at least 1"):
        batch_plan(0, 1, 100)
