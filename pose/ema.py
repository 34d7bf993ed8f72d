"""An exponential moving average of a model's weights, as MMPose's RTMPose configs keep one.

`ExpMomentumEMA` is MMPose 1.x's `ExpMomentumEMA` under mmengine's `EMAHook(update_buffers=True)`: after each
optimiser step the averaged copy moves towards the model by a momentum that starts near 1 and decays to
`momentum`, (1 - momentum) * exp(-(1 + n) / gamma) + momentum at the n-th update, so the average follows the
model closely early in training and smooths it later. The first update copies the model. With buffers averaged,
BatchNorm's running statistics are averaged too; integer buffers (`num_batches_tracked`) keep the value of the
first update, as mmengine's `BaseAveragedModel` leaves them. MMPose validates and saves the averaged weights.
"""

from __future__ import annotations

import copy
import math

import torch


class ExpMomentumEMA:
    """The averaged copy of `model` (`module`, in eval mode, no gradients) and its update count (`steps`)."""

    def __init__(self, model: torch.nn.Module, momentum: float = 0.0002, gamma: int = 2000):
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.momentum, self.gamma, self.steps = momentum, gamma, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One update from `model` (the same architecture, any device: values are copied to the average's)."""
        source = model.state_dict()
        averaged = self.module.state_dict()
        if self.steps == 0:
            for key, value in averaged.items():
                value.copy_(source[key])
        else:
            momentum = (1 - self.momentum) * math.exp(-float(1 + self.steps) / self.gamma) + self.momentum
            for key, value in averaged.items():
                if value.dtype.is_floating_point:
                    value.mul_(1 - momentum).add_(source[key].to(value.device), alpha=momentum)
        self.steps += 1

    def state_dict(self) -> dict:
        """The averaged weights and the update count, for a checkpoint (resuming continues the same average)."""
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
