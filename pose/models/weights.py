"""Reading weight files: one clear line for every way a file can be wrong.

Weights come as files (local, or fetched from S3 by the caller), never downloaded. A file that is
missing, is not a torch state_dict, or does not fit the model raises ValueError naming the file
and the first mismatches.
"""

from __future__ import annotations

import os

import torch


def weights_name(path_or_fileobj) -> str:
    """What to call a weights file in a message: its path, or a file object's name."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        return os.fspath(path_or_fileobj)
    return getattr(path_or_fileobj, "name", repr(path_or_fileobj))


def read_state_dict(path_or_fileobj, where: str, kind: str, example: str) -> dict[str, torch.Tensor]:
    """Load a state_dict with `weights_only=True`; `where` starts every message, `kind` says what
    dict was expected and `example` names a file of the right sort."""
    if isinstance(path_or_fileobj, (str, os.PathLike)) and not os.path.isfile(path_or_fileobj):
        raise ValueError(f"{where}: no such file")
    try:
        state = torch.load(path_or_fileobj, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a state_dict file"
        raise ValueError(
            f"{where}: not a readable torch state_dict ({type(exc).__name__}); expected a file like {example}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: expected a dict of tensors ({kind}), got {type(state).__name__}")
    return state


def check_fits(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str, *, optional=lambda key: False
) -> None:
    """Raise ValueError unless `state` has exactly the keys and shapes of `expected` (keys for which
    `optional(key)` is true may be absent)."""
    missing = [key for key in expected if key not in state and not optional(key)]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if keys
    ]
    if problems:
        raise ValueError(f"{where}: does not match the model: {'; '.join(problems)}")
