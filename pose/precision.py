"""The arithmetic of a training step and of inference: bfloat16 autocast and channels-last tensors
where the hardware runs them fast, float32 otherwise.

- On a GPU: bf16 autocast and channels-last for every model.
- On a CPU with native bf16 (AVX512-BF16 or AMX: AMD Zen 4 and later, Intel Cooper Lake,
  Sapphire Rapids and later): bf16 autocast and channels-last for the models that gain from them
  (a task's `cpu_bf16`), through oneDNN (docs/benchmarks.md has the figures).
- On other CPUs: float32, since bf16 there is emulated and slower.

Parameters, gradients and optimiser state stay float32 in every case (autocast only lowers the
precision of the forward pass's matrix products), so checkpoints do not depend on the precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own test)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward pass; None: float32
    channels_last: bool = False  # model and image batches in NHWC

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return f"{name}{', channels-last' if self.channels_last else ''}"


def _checked(device: torch.device | str, setting: str) -> torch.device:
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: choose one of {', '.join(PRECISIONS)}")
    return torch.device(device)


def training_precision(device: torch.device | str, setting: str = "auto", task=None) -> Precision:
    """The precision of a training step on `device`. `setting`: "auto" (see the module's text),
    "bf16" (bf16 autocast and channels-last on any device) or "fp32" (float32; channels-last
    still on GPUs, where it costs nothing)."""
    device = _checked(device, setting)
    if setting == "fp32":
        return Precision(None, channels_last=device.type == "cuda")
    if setting == "bf16" or device.type == "cuda":
        return Precision(torch.bfloat16, channels_last=True)
    fast = getattr(task, "cpu_bf16", False) and cpu_has_bf16()
    return Precision(torch.bfloat16 if fast else None, channels_last=fast)


def inference_precision(device: torch.device | str, setting: str = "auto") -> Precision:
    """The precision of the models' forward passes in `annotate`. "auto": bf16 autocast and
    channels-last on CPUs with native bf16, float32 on other CPUs and on GPUs (bf16 inference has not
    been compared with float32 there). "bf16" or "fp32" force one."""
    device = _checked(device, setting)
    fast = setting == "bf16" or (setting == "auto" and device.type == "cpu" and cpu_has_bf16())
    return Precision(torch.bfloat16 if fast else None, channels_last=fast)
