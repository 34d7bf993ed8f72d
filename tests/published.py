"""The published checkpoints' file layouts, and random weights written in exactly those layouts.

No published weights can be downloaded where this project is built, so the loaders are tested
against files that have the published key names, shapes, order and container, filled with
deterministic random values. The layouts (`tests/data/published/<name>.json`) were read off the
frameworks' own model code (see each manifest's "source" and `tools/README.md`):

- `mmpose-{res50,res101,res152,hrnet-w32,hrnet-w48,rtmpose-t,rtmpose-s,rtmpose-m,rtmpose-l}`,
  `mmpose-rtmpose-{m,l}-384x288` (the 384x288 RTMPose heads differ; the heatmap models' 384x288,
  DARK and UDP variants share the 256x192 layout): MMPose 1.x `{'meta', 'state_dict'}` files.
- `release-pose_resnet_{50,101,152}`, `release-pose_hrnet_w{32,48}`: the original Simple
  Baselines / HRNet releases, a bare state_dict (the MMPose names without `backbone.`/`head.`).
- `torchvision-keypointrcnn_resnet50_fpn`: a bare state_dict with FrozenBatchNorm2d buffers.

Random values (`random_state_dict`) keep a deep network's signal O(1) and image-dependent in eval
mode without running the network: He-scaled convolution/linear weights, BatchNorm folded close to
the identity, and the last BatchNorm of every residual branch (and of HRNet's fuse paths) small,
so that sums of branches do not grow the activations layer after layer.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import types
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import torch

from pose.joints import JOINT_NAMES

MANIFESTS = Path(__file__).parent / "data" / "published"
GOLDENS = Path(__file__).parent / "data" / "goldens"

# ConvTranspose2d weights are (in, out, kh, kw); with stride 2 each output pixel sees in * kh * kw / 4 of them.
_TRANSPOSED = re.compile(r"(^|\.)deconv_layers\.\d+\.weight$|kps_score_lowres\.weight$")

# BatchNorms that end a residual branch (added to an identity path): Bottleneck's bn3, BasicBlock's
# bn2 (ResNet, HRNet), HRNet's fuse paths and CSPNeXt's block output convs (conv2's pointwise conv).
# Shortcut projections (downsample) carry the signal and keep a weight near 1.
_ADDED_NORM = re.compile(
    r"(\.bn3|\.layer\d\.\d+\.bn2|branches\.\d+\.\d+\.bn2|fuse_layers\.\d+\.\d+\.(\d+\.)*1"
    r"|blocks\.\d+\.conv2\.pointwise_conv\.bn)$"
)
# CSPNeXt's ConvModules (conv, bn, SiLU): SiLU keeps ~0.71 of a He-scaled layer's variance
# (ReLU's gain is what He scaling assumes), so their BatchNorm weights are ~1.2 to make up for it.
_SILU_NORM = re.compile(r"^backbone\.(stem|stage\d)\..*\.bn$")


def manifest_names() -> list[str]:
    """The names of all manifests (`tests/data/published/<name>.json`), sorted."""
    return sorted(p.stem for p in MANIFESTS.glob("*.json"))


@cache
def manifest_document(name: str) -> dict:
    """A manifest as stored: {"source", "container", ..., "keys": [[key, shape], ...]}."""
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def manifest(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """The published file's state_dict keys and shapes, in file order."""
    return [(key, tuple(shape)) for key, shape in manifest_document(name)["keys"]]


def _norm_prefixes(keys: list[str]) -> set[str]:
    return {key[: -len(".running_mean")] for key in keys if key.endswith(".running_mean")}


def _values(key: str, shape: tuple[int, ...], norms: set[str], rng: np.random.Generator) -> np.ndarray:
    """Random float32 values for one tensor, by what the key is (see the module docstring)."""
    prefix, _, leaf = key.rpartition(".")
    if prefix in norms:  # BatchNorm / FrozenBatchNorm2d: y = (x - mean) / sqrt(var) * weight + bias
        if leaf == "weight":
            low, high = (
                (0.15, 0.3) if _ADDED_NORM.search(prefix) else (1.15, 1.35) if _SILU_NORM.search(prefix) else (0.8, 1.2)
            )
            return rng.uniform(low, high, shape)
        if leaf == "running_var":
            return rng.uniform(0.8, 1.25, shape)
        return rng.normal(0.0, 0.02, shape)  # bias, running_mean: small, or constants outgrow the image's signal
    if key.endswith("gau.gamma"):  # (2, s) query/key scales: positive, or relu(q.k)^2 can be 0 for every token pair
        return rng.uniform(0.25, 0.45, shape)
    if key.endswith("gau.beta"):  # (2, s) query/key offsets
        return rng.normal(0.0, 0.05, shape)
    if len(shape) >= 2:  # convolution and linear weights, He-scaled by fan-in
        fan_in = int(np.prod(shape[1:]))
        if _TRANSPOSED.search(key):
            fan_in = shape[0] * int(np.prod(shape[2:])) // 4
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if key.endswith("attention.fc.bias"):  # CSPNeXt's channel attention: hardsigmoid(1.5 + ...) ~ 0.75, not 0.5 a stage
        return rng.normal(1.5, 0.3, shape)
    if key.endswith(".g") or key.endswith("res_scale.scale"):  # RTMCC's ScaleNorm gain and GAU's residual scale
        return rng.uniform(0.8, 1.2, shape)
    return rng.normal(0.0, 0.05, shape)  # biases


def random_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights in manifest `name`'s layout: {key: tensor}, in file order.

    Each tensor is drawn from `np.random.default_rng([seed, crc32(key)])` (so a value depends on
    its key and the seed only, on any machine), float32; `num_batches_tracked` is an int64 scalar.
    """
    layout = manifest(name)
    norms = _norm_prefixes([key for key, _ in layout])
    state = {}
    for key, shape in layout:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0, dtype=torch.int64)
            continue
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        state[key] = torch.from_numpy(np.asarray(_values(key, shape, norms, rng), np.float32).reshape(shape))
    return state


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys, shapes and bytes of a state_dict, in its order (for goldens to name their weights)."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Containers


def coco_dataset_meta() -> dict:
    """What MMPose's training runner stores as `meta['dataset_meta']` for COCO: mmpose's
    `parse_pose_metainfo(configs/_base_/datasets/coco.py)`, with its numpy arrays (uint8 colours,
    float32 weights and sigmas). Values as MMPose 1.3.2 builds them."""
    names = list(JOINT_NAMES)  # COCO's 17 joints in COCO's order, as MMPose's coco.py lists them
    flip = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    links = [
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ]
    green, orange, blue = [0, 255, 0], [255, 128, 0], [51, 153, 255]
    keypoint_colors = [blue] * 5 + [green, orange] * 6
    link_colors = [green, green, orange, orange, blue, blue, blue, blue, green, orange, green, orange] + [blue] * 7
    return {
        "dataset_name": "coco",
        "num_keypoints": 17,
        "keypoint_id2name": dict(enumerate(names)),
        "keypoint_name2id": {n: i for i, n in enumerate(names)},
        "upper_body_ids": list(range(11)),
        "lower_body_ids": list(range(11, 17)),
        "flip_indices": flip,
        "flip_pairs": [(flip[i], i) for i in range(17) if flip[i] != i],
        "keypoint_colors": np.array(keypoint_colors, np.uint8),
        "num_skeleton_links": len(links),
        "skeleton_links": links,
        "skeleton_link_colors": np.array(link_colors, np.uint8),
        "dataset_keypoint_weights": np.array(
            [1.0] * 7 + [1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5], np.float32
        ),
        "sigmas": np.array(
            [
                0.026,
                0.025,
                0.025,
                0.035,
                0.035,
                0.079,
                0.079,
                0.072,
                0.072,
                0.062,
                0.062,
                0.107,
                0.107,
                0.087,
                0.087,
                0.089,
                0.089,
            ],
            np.float32,
        ),
    }


# numpy 2 moved numpy.core to numpy._core; the function is the same object under both names.
_RECONSTRUCT = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct


class _Numpy1Pickler(pickle._Pickler):
    """Pickles numpy arrays under the names numpy 1.x gave them (`numpy.core.multiarray._reconstruct`),
    as every published MMPose file was written, even when numpy 2 (`numpy._core...`) is installed."""

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


_NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")  # what torch.save's pickle_module needs: Pickler and dump
_NUMPY1_PICKLE.Pickler, _NUMPY1_PICKLE.dump = _Numpy1Pickler, pickle.dump


def numpy_safe_globals() -> list:
    """What `torch.load(weights_only=True)` must be given (`torch.serialization.safe_globals`) to read
    a published MMPose file's numpy arrays under the installed numpy: the array reconstructor (by the
    name numpy 1.x pickled it under, and numpy 2's own), `numpy.ndarray`, `numpy.dtype` and the dtype
    classes of meta's arrays (uint8, float32), which the unpickler checks when it restores a dtype."""
    return [
        (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
        _RECONSTRUCT,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint8)),
        type(np.dtype(np.float32)),
    ]


def write_mmpose_checkpoint(path: str | Path, name: str, seed: int = 0, *, config_text: str = "") -> dict:
    """Write random weights of manifest `name` as MMPose publishes them: {'meta', 'state_dict'} in
    the legacy (non-zip) torch format (`tools/misc/publish_model.py`: `_use_new_zipfile_serialization=False`),
    `meta` as mmengine's runner fills it. Returns the checkpoint dict written."""
    checkpoint = {
        "meta": {
            "epoch": 210,
            "iter": 0,
            "cfg": config_text,
            "seed": seed,
            "experiment_name": f"random-{name}-seed{seed}",
            "time": "20230101_000000",
            "mmengine_version": "0.10.7",
            "dataset_meta": coco_dataset_meta(),
        },
        "state_dict": random_state_dict(name, seed),
    }
    torch.save(checkpoint, str(path), pickle_module=_NUMPY1_PICKLE, _use_new_zipfile_serialization=False)
    return checkpoint


def write_release_checkpoint(path: str | Path, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write random weights of a `release-*` manifest as the original releases are: the bare state_dict
    (an OrderedDict) in the legacy (non-zip) torch format. Returns the state_dict."""
    from collections import OrderedDict

    state = OrderedDict(random_state_dict(name, seed))
    torch.save(state, str(path), _use_new_zipfile_serialization=False)
    return state


def write_torchvision_checkpoint(
    path: str | Path, seed: int = 0, name: str = "torchvision-keypointrcnn_resnet50_fpn"
) -> dict:
    """Write random Keypoint R-CNN weights as torchvision's download file: a bare state_dict
    (FrozenBatchNorm2d buffers, no num_batches_tracked), torch's default (zip) format."""
    from collections import OrderedDict

    state = OrderedDict(random_state_dict(name, seed))
    torch.save(state, str(path))
    return state


def golden_names() -> list[str]:
    """The published-model variants with a golden file (`tests/data/goldens/<variant>.npz`), sorted. The
    folder also holds training goldens (targets_*, augment_*, recipes.json) that their own tests read."""
    return sorted(p.stem for p in GOLDENS.glob("*.npz") if p.stem.startswith(("mmpose-", "release-")))


def load_golden(variant: str) -> dict:
    """A golden file's arrays as a dict (text fields as str, `seed` as int). See `tools/README.md`."""
    with np.load(GOLDENS / f"{variant}.npz", allow_pickle=False) as data:
        golden = {key: data[key] for key in data.files}
    for key, value in golden.items():
        if value.dtype.kind == "U":
            golden[key] = str(value)
    golden["seed"] = int(golden["seed"])
    return golden
