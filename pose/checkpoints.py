"""The field's published keypoint checkpoints: read a file, tell what it holds, build the model its
framework trained, and run it as that framework runs it (`pose.topdown.PoseModel`).

Files read (local bytes; `jobs/models.py` fetches them from S3):
- MMPose 1.x top-down COCO-17 models as `tools/misc/publish_model.py` writes them ({"meta": ...,
  "state_dict": ...}, numpy arrays in `meta`): SimpleBaseline on ResNet-50/101/152
  (`td-hm_res50_8xb64-210e_coco-256x192-*.pth`), HRNet-W32/W48 (`td-hm_hrnet-w32_8xb64-210e_coco-256x192-*.pth`, and
  the `dark` and `udp` variants), RTMPose-t/s/m/l (`rtmpose-m_simcc-coco_pt-aic-coco_420e-256x192-*.pth`, ...).
- The original releases, plain state_dicts: Simple Baselines `pose_resnet_{50,101,152}_{256x192,384x288}.pth.tar`
  (trained on BGR input) and HRNet `pose_hrnet_w{32,48}_{256x192,384x288}.pth`.

The family, depth or width, input size and codec come from the keys and shapes and from the published
file names (`256x192` is h x w there; `dark`, `udp`); `Overrides` set them by hand and must agree with
what the weights fix. Anything that cannot be used raises `CheckpointError`: one line naming the file,
what was found and how to fix it. Files are read with `torch.load(weights_only=True)`, allowing only
numpy's arrays, scalars and dtypes besides tensors.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from pose.errors import UserError
from pose.joints import NUM_JOINTS
from pose.topdown import CropConvention

Codec = Literal["msra", "dark", "udp", "simcc"]
# The architectures a published file can hold, by the names `--keypoint-arch` takes.
ARCHITECTURES = (
    "resnet50",
    "resnet101",
    "resnet152",
    "hrnet-w32",
    "hrnet-w48",
    "rtmpose-t",
    "rtmpose-s",
    "rtmpose-m",
    "rtmpose-l",
)
CODECS: tuple[Codec, ...] = ("msra", "dark", "udp", "simcc")
RESNET_DEPTHS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}  # blocks in layer3


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used as asked: one line, naming the file."""


@dataclass(frozen=True)
class Overrides:
    """What the user said about a file, each None to take it from the file."""

    arch: str | None = None
    input_size: tuple[int, int] | None = None  # (w, h)
    codec: Codec | None = None


@dataclass(frozen=True)
class CheckpointSpec:
    """What a published file holds and how its framework runs it."""

    framework: Literal["mmpose", "simple-baselines", "hrnet"]  # who published the file
    arch: str  # one of ARCHITECTURES
    input_size: tuple[int, int]  # (w, h)
    codec: Codec
    bgr: bool = False  # the network was trained on BGR pixels (the Simple Baselines release)

    @property
    def name(self) -> str:
        w, h = self.input_size
        return f"{self.framework} {self.arch} {h}x{w} {self.codec}{' (BGR)' if self.bgr else ''}"


# --------------------------------------------------------------------------------------------
# Reading


def _numpy_globals() -> list:
    """What MMPose's `meta` pickles besides tensors: numpy arrays, scalars and dtypes. Published
    files were written under numpy 1, which named the reconstructors `numpy.core.multiarray.*`;
    numpy 2 calls them `numpy._core.multiarray.*`: both names are allowed."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    named = [
        (function, f"numpy.{core}.multiarray.{function.__name__}")
        for function in (multiarray._reconstruct, multiarray.scalar)
        for core in ("core", "_core")
    ]
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGUSO"]
    return [*named, np.ndarray, np.dtype, *dtypes]


def read_checkpoint(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of a checkpoint file's bytes: MMPose's {"meta", "state_dict"}, a
    {"state_dict": ...} wrapper, or a plain state_dict (meta {}). `name` is the file, for messages."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols says nothing about the file
            content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, not torch, or code in the pickle: all "unusable"
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        reason = f"it would call {code.group(1)}, which weights-only loading refuses" if code else type(error).__name__
        raise CheckpointError(
            f"{name}: not a readable torch checkpoint ({reason}); expected a published keypoint model file"
        ) from None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        state, meta = content["state_dict"], content.get("meta") or {}
    else:
        state, meta = content, {}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{name}: holds no state_dict of tensors (found {type(state).__name__}); "
            "expected a published keypoint model file"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}, meta if isinstance(meta, dict) else {}


# --------------------------------------------------------------------------------------------
# Identifying


def identify(state: dict[str, torch.Tensor], name: str, overrides: Overrides = Overrides()) -> CheckpointSpec:
    """What a state_dict is, from its keys and shapes and the file name's published patterns,
    then `overrides`; raises CheckpointError for anything else."""
    mmpose = any(k.startswith("backbone.") for k in state)
    prefix, head = ("backbone.", "head.") if mmpose else ("", "")
    found: CheckpointSpec
    if f"{head}cls_x.weight" in state and f"{prefix}stem.0.conv.weight" in state and mmpose:
        _check_joints(state["head.final_layer.weight"].shape[0], name)
        size = _rtmpose_size(state, name)
        input_size = (state["head.cls_x.weight"].shape[0] // 2, state["head.cls_y.weight"].shape[0] // 2)
        found = CheckpointSpec("mmpose", f"rtmpose-{size}", input_size, "simcc")
    elif f"{prefix}transition1.0.0.weight" in state and f"{prefix}stage4.0.fuse_layers.0.1.0.weight" in state:
        _check_joints(state[f"{head}final_layer.weight"].shape[0], name)
        width = int(state[f"{prefix}transition1.0.0.weight"].shape[0])
        if width not in (32, 48):
            raise CheckpointError(f"{name}: an HRNet of width {width}; pose-jobs runs HRNet-W32 and HRNet-W48")
        found = CheckpointSpec(
            "mmpose" if mmpose else "hrnet", f"hrnet-w{width}", _size_from_name(name), _codec_from_name(name)
        )
    elif f"{prefix}layer4.0.conv3.weight" in state and f"{head}deconv_layers.0.weight" in state:
        _check_joints(state[f"{head}final_layer.weight"].shape[0], name)
        blocks = (
            len({k.split(".")[2] for k in state if k.startswith(f"{prefix}layer3.")})
            if mmpose
            else len({k.split(".")[1] for k in state if k.startswith("layer3.")})
        )
        if blocks not in RESNET_DEPTHS:
            raise CheckpointError(
                f"{name}: a ResNet with {blocks} blocks in layer3; pose-jobs runs ResNet-50, -101 and -152"
            )
        if "caffe" in name.rsplit("/", 1)[-1].lower():
            raise CheckpointError(
                f"{name}: a Caffe-style ResNet (stride in the first 1x1 convolution), which pose-jobs does not build; "
                "use the PyTorch-style pose_resnet files or MMPose's"
            )
        codec = _codec_from_name(name)
        found = CheckpointSpec(
            "mmpose" if mmpose else "simple-baselines",
            RESNET_DEPTHS[blocks],
            _size_from_name(name),
            codec,
            bgr=not mmpose,
        )
    elif any(k.startswith("roi_heads.keypoint_predictor.") for k in state):
        raise CheckpointError(
            f"{name}: a torchvision Keypoint R-CNN, which finds its own persons: give it to annotate as --keypoints "
            "without --detector or --boxes"
        )
    else:
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"{name}: not a keypoint model pose-jobs knows (first keys: {sample}); "
            "it runs MMPose's SimpleBaseline, HRNet and "
            "RTMPose COCO files, the Simple Baselines and HRNet releases, and torchvision's Keypoint R-CNN"
        )
    return _overridden(found, overrides, name)


def _check_joints(count: int, name: str) -> None:
    if count != NUM_JOINTS:
        raise CheckpointError(
            f"{name}: a model of {count} joints (COCO-WholeBody has 133, MPII 16); "
            f"pose-jobs runs COCO's {NUM_JOINTS} body joints"
        )


def _rtmpose_size(state: dict, name: str) -> str:
    """RTMPose t/s/m/l from the last stage's width (the backbone's widen factor: 384, 512, 768, 1024)."""
    widths = {384: "t", 512: "s", 768: "m", 1024: "l"}
    channels = int(state["head.final_layer.weight"].shape[1])
    if channels not in widths:
        raise CheckpointError(
            f"{name}: an RTMPose whose backbone ends in {channels} channels; "
            "pose-jobs runs RTMPose-t/s/m/l (384/512/768/1024)"
        )
    return widths[channels]


def _size_from_name(name: str) -> tuple[int, int]:
    """(w, h) from a published file name's `HxW` (256x192, 384x288); 256x192 when it has none."""
    match = re.search(r"(?<!\d)(\d{3})x(\d{3})(?!\d)", name.rsplit("/", 1)[-1])
    return (int(match.group(2)), int(match.group(1))) if match else (192, 256)


def _codec_from_name(name: str) -> Codec:
    base = name.rsplit("/", 1)[-1].lower()
    return "udp" if "udp" in base else "dark" if "dark" in base else "msra"


def _overridden(found: CheckpointSpec, overrides: Overrides, name: str) -> CheckpointSpec:
    if overrides.arch is not None and overrides.arch != found.arch:
        if overrides.arch not in ARCHITECTURES:
            raise CheckpointError(
                f"unknown keypoint architecture {overrides.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        raise CheckpointError(
            f"{name}: holds a {found.arch}, not a {overrides.arch}; leave out --keypoint-arch or pick the right file"
        )
    spec = found
    if overrides.codec is not None:
        simcc = found.codec == "simcc"
        if overrides.codec not in CODECS or (overrides.codec == "simcc") != simcc:
            allowed = "simcc" if simcc else "msra, dark or udp"
            raise CheckpointError(
                f"{name}: a {found.arch} decodes with {allowed}, not {overrides.codec!r}; fix --codec"
            )
        spec = replace(spec, codec=overrides.codec)
    if overrides.input_size is not None:
        size = tuple(int(v) for v in overrides.input_size)
        if found.codec == "simcc" and size != found.input_size:
            w, h = found.input_size
            raise CheckpointError(
                f"{name}: its SimCC head is made for {w}x{h} (w x h) inputs, not {size[0]}x{size[1]}; fix --input-size"
            )
        if any(v % 32 for v in size):
            raise CheckpointError(f"{name}: input size {size[0]}x{size[1]}: width and height must be multiples of 32")
        spec = replace(spec, input_size=size)
    return spec


# --------------------------------------------------------------------------------------------
# Building


def crop_convention(spec: CheckpointSpec) -> CropConvention:
    """Box padding 1.25, aspect fixed to the input; UDP's own warp for UDP models, the releases' own
    arithmetic for theirs."""
    if spec.framework != "mmpose":
        return CropConvention(spec.input_size, padding=1.25, centring="release")
    return CropConvention(spec.input_size, padding=1.25, centring="udp" if spec.codec == "udp" else "mmpose")


def build_network(spec: CheckpointSpec) -> torch.nn.Module:
    """The network of `spec`, with the state_dict names of MMPose's published files."""
    if spec.arch.startswith("hrnet"):
        from pose.models.hrnet import build_hrnet

        return build_hrnet(int(spec.arch.removeprefix("hrnet-w")))
    if spec.arch.startswith("rtmpose"):
        from pose.models.rtmpose import RTMPoseConfig, build_rtmpose

        return build_rtmpose(RTMPoseConfig(size=spec.arch.removeprefix("rtmpose-"), input_size=spec.input_size))
    from pose.models.keypoints import SimpleBaselineNet

    return SimpleBaselineNet(spec.arch)


def mmpose_keys(state: dict[str, torch.Tensor], spec: CheckpointSpec) -> dict[str, torch.Tensor]:
    """A state_dict under MMPose's names: the releases' keys gain `backbone.` / `head.`."""
    if spec.framework == "mmpose":
        return state
    head = ("final_layer.", "deconv_layers.")
    return {(f"head.{k}" if k.startswith(head) else f"backbone.{k}"): v for k, v in state.items()}


def decoder(spec: CheckpointSpec):
    """The decoder and flip test of `spec`'s framework (`pose.codecs`)."""
    from pose import codecs

    w, h = spec.input_size
    heatmap_size = (w // 4, h // 4)
    if spec.codec == "simcc":
        return codecs.SimCCDecoder(input_size=spec.input_size)
    if spec.codec == "udp":
        return codecs.UDPHeatmapDecoder(input_size=spec.input_size, heatmap_size=heatmap_size)
    if spec.framework == "mmpose":
        # MMPose's DARK configs blur with 11 taps, except td-hm_res152_dark at 384x288 (17).
        blur = 17 if (spec.arch, spec.input_size, spec.codec) == ("resnet152", (288, 384), "dark") else 11
        return codecs.MSRAHeatmapDecoder(
            input_size=spec.input_size,
            heatmap_size=heatmap_size,
            unbiased=spec.codec == "dark",
            blur_kernel_size=blur,
            shift_flipped=True,
        )
    return codecs.SimpleBaselinesDecoder(input_size=spec.input_size, heatmap_size=heatmap_size)


def load_published(data: bytes, name: str, overrides: Overrides = Overrides()):
    """A `pose.topdown.PoseModel` (network in eval mode on the CPU) from a published file's bytes."""
    from pose.models.weights import check_fits

    state, _ = read_checkpoint(data, name)
    spec = identify(state, name, overrides)
    network = build_network(spec)
    state = mmpose_keys(state, spec)
    try:
        check_fits(state, network.state_dict(), name, optional=lambda key: key.endswith("num_batches_tracked"))
    except ValueError as error:
        raise CheckpointError(f"{error}; is it really a {spec.name} file?") from None
    network.load_state_dict(state, strict=False)
    return pose_model(spec, network)


def pose_model(spec: CheckpointSpec, network: torch.nn.Module):
    """`spec`'s network (with its weights) as its framework runs it: a `pose.topdown.PoseModel`."""
    from pose.topdown import NormalisedPoseModel

    return NormalisedPoseModel(
        name=spec.name, crop=crop_convention(spec), network=network.eval(), decoder=decoder(spec), bgr=spec.bgr
    )


def keypoint_net_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A published Simple Baselines file (MMPose's ResNet SimpleBaseline or the release) as a
    state_dict of pose-jobs' trainable `KeypointNet` (whole ResNet, three 256-channel
    deconvolutions): `backbone.*`, `deconv.*`, `final.*`. The release's BGR training is not
    undone: fine-tuning on RGB pixels starts from weights that saw the channels swapped."""
    state, _ = read_checkpoint(data, name)
    spec = identify(state, name)
    if not spec.arch.startswith("resnet"):
        raise CheckpointError(
            f"{name}: a {spec.arch}; "
            "--init-weights takes a ResNet Simple Baselines file (pose-jobs trains that network)"
        )
    renamed = {}
    for key, value in mmpose_keys(state, spec).items():
        renamed[key.replace("head.deconv_layers.", "deconv.").replace("head.final_layer.", "final.")] = value
    return renamed
