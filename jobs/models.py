"""Loading trained models for inference: the one place where a command turns `--model` into a
network in eval mode (evaluation, annotation, pictures).

A *run folder* is what `jobs/train.py` leaves in `--out` (local or s3://): `model.json` (task,
recipe, model configuration, final figures) and `model.pt` (a plain state_dict); `save_run` writes
one and `load_run` reads one back, for the runner, the tests and the benchmarks alike. A detector can
also be one of torchvision's published COCO weight files (`*.pth`, local or s3://), e.g.
`fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`: nothing is ever downloaded.

Every weight file is read with `torch.load(..., weights_only=True)`. A wrong `--model` (missing,
not a model, the wrong task or architecture) raises `ModelError`, one line that the CLI prints.
"""

from __future__ import annotations

import io
import json

from jobs.storage import StorageOptions, exists, join, read_bytes, write_bytes_atomic
from pose.errors import UserError

# torchvision's original COCO detector: what a bare COCO weight file is taken for unless told otherwise.
DEFAULT_COCO_ARCH = "fasterrcnn_resnet50_fpn"


class ModelError(UserError):
    """A model the user pointed at cannot be used (missing, wrong task, wrong file): one line."""


def save_run(folder: str, info: dict, state_dict: dict, options: StorageOptions = StorageOptions()) -> str:
    """Write a run folder (local or s3://): `model.pt` (`state_dict`, tensors moved to the CPU) and
    `model.json` (`info`: at least "task", and what that task needs to rebuild the model: "recipe"
    for svhn and keypoints, "model" for a detector). Each file is written atomically, weights
    first, so that a folder with a model.json is a finished one. Returns `folder`."""
    import torch

    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in state_dict.items()}, buffer)
    write_bytes_atomic(join(folder, "model.pt"), buffer.getvalue(), options)
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(join(folder, "model.json"), text.encode(), options)
    return folder


def load_run(folder: str, options: StorageOptions = StorageOptions()) -> tuple[dict, dict]:
    """(model.json content, state_dict on the CPU) of a run folder written by `save_run`, local or
    s3://; the weights are loaded with weights_only=True."""
    import torch

    info_url, weights_url = join(folder, "model.json"), join(folder, "model.pt")
    if not exists(info_url, options) or not exists(weights_url, options):
        raise ModelError(
            f"{folder}: not a trained model folder (expected model.pt and model.json; did training finish?)"
        )
    info = json.loads(read_bytes(info_url, options))
    state = torch.load(io.BytesIO(read_bytes(weights_url, options)), map_location="cpu", weights_only=True)
    return info, state


def _run_of_task(model_dir: str, task: str, options: StorageOptions) -> tuple[dict, dict]:
    info, state = load_run(model_dir, options)
    if info.get("task") != task:
        raise ModelError(f"{model_dir}: holds a '{info.get('task')}' model, not a '{task}' model")
    return info, state


def load_digit_model(model_dir: str, options: StorageOptions = StorageOptions()):
    """(model in eval mode, DigitRecipe) of a `train-svhn` run folder."""
    from pose.digit_task import DigitRecipe
    from pose.models.digits import build_digit_model

    info, state = _run_of_task(model_dir, "svhn", options)
    recipe = DigitRecipe.from_dict(info["recipe"])
    model = build_digit_model(recipe.model)
    model.load_state_dict(state)
    return model.eval(), recipe


def load_keypoint_model(model_dir: str, options: StorageOptions = StorageOptions()):
    """(model in eval mode, KeypointRecipe) of a `train-keypoints` run folder."""
    from pose.keypoint_task import KeypointRecipe

    info, state = _run_of_task(model_dir, "keypoints", options)
    recipe = KeypointRecipe.from_dict(info["recipe"])
    model = recipe.build_network()
    model.load_state_dict(state)
    return model.eval(), recipe


def load_pose_model(spec: str, options: StorageOptions = StorageOptions(), overrides=None):
    """A `pose.topdown.PoseModel` (network in eval mode on the CPU) of `--keypoints`: a
    `train-keypoints` run folder, or a published checkpoint file (`pose.checkpoints`: MMPose's
    SimpleBaseline, HRNet and RTMPose files, the Simple Baselines and HRNet releases), local or
    s3://. `overrides` (`pose.checkpoints.Overrides`) only apply to files."""
    from pose.checkpoints import CheckpointError, Overrides, load_published
    from pose.keypoint_task import TrainedPoseModel

    overrides = overrides or Overrides()
    if exists(join(spec, "model.json"), options):
        if overrides != Overrides():
            raise ModelError(
                f"{spec}: a train-keypoints run folder knows its own architecture, input size and codec; leave out "
                "--keypoint-arch, --input-size and --codec"
            )
        network, recipe = load_keypoint_model(spec, options)
        if recipe.framework == "pose-jobs":
            return TrainedPoseModel(network, recipe)
        from pose.checkpoints import pose_model  # a reference recipe's run is run as its framework runs its files

        return pose_model(recipe.spec(), network)
    if not exists(spec, options):
        raise ModelError(
            f"{spec}: no such keypoint model (expected a train-keypoints run folder or a published checkpoint file)"
        )
    try:
        return load_published(read_bytes(spec, options), spec, overrides)
    except CheckpointError as error:
        raise ModelError(str(error)) from None


# `--keypoint-arch` values for torchvision's Keypoint R-CNN files, whose names usually say it by their hash.
KEYPOINT_RCNN_VARIANTS = {"keypointrcnn-coco-v1": "coco_v1", "keypointrcnn-legacy": "legacy"}


def is_keypoint_rcnn(spec: str, options: StorageOptions = StorageOptions()) -> bool:
    """Whether `--keypoints` is a torchvision Keypoint R-CNN file (a detector with keypoints)."""
    from pose.checkpoints import CheckpointError, read_checkpoint
    from pose.models.keypoint_rcnn import is_keypoint_rcnn_state

    if exists(join(spec, "model.json"), options) or not exists(spec, options):
        return False
    try:
        state, _ = read_checkpoint(read_bytes(spec, options), spec)
    except CheckpointError as error:
        raise ModelError(str(error)) from None
    return is_keypoint_rcnn_state(state)


def load_keypoint_rcnn_file(spec: str, options: StorageOptions = StorageOptions(), arch: str | None = None):
    """torchvision's Keypoint R-CNN in eval mode from a published file (local or s3://); `arch`
    (`KEYPOINT_RCNN_VARIANTS`) names the variant of a file whose name lost its hash."""
    from pose.models.keypoint_rcnn import load_keypoint_rcnn

    if arch is not None and arch not in KEYPOINT_RCNN_VARIANTS:
        raise ModelError(
            f"{spec}: a torchvision Keypoint R-CNN; --keypoint-arch takes {' or '.join(KEYPOINT_RCNN_VARIANTS)} "
            f"for it, not {arch!r}"
        )
    buffer = io.BytesIO(read_bytes(spec, options))
    buffer.name = spec
    try:
        return load_keypoint_rcnn(buffer, KEYPOINT_RCNN_VARIANTS.get(arch)).eval()
    except ValueError as error:
        message = (
            str(error)
            .replace("pass variant=", "pass --keypoint-arch")
            .replace("coco_v1, legacy", " or ".join(KEYPOINT_RCNN_VARIANTS))
        )
        raise ModelError(message) from None


def load_detector(spec: str, options: StorageOptions = StorageOptions(), arch: str | None = None):
    """A Faster R-CNN in eval mode, with `model.config` (a DetectorConfig) set.

    spec: a `train-detector` run folder (its model.json names the architecture and configuration;
    `arch`, if given, must agree), or a state_dict file (`.pth` / `.pt`) such as torchvision's
    published COCO weights: built as `arch` (default: torchvision's original fasterrcnn_resnet50_fpn) with as
    many classes as the file's box classifier has (91 for COCO's files), with trainable BatchNorm
    when the file has BatchNorm counters, and torchvision's default input size.
    """
    from pose.models.detector import ARCHITECTURES, DetectorConfig, build_detector, load_detector_weights

    if arch is not None and arch not in ARCHITECTURES:
        raise ModelError(f"unknown detector architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if exists(join(spec, "model.json"), options):
        info, state = _run_of_task(spec, "detector", options)
        config = DetectorConfig.from_dict(info["model"])
        if arch is not None and arch != config.arch:
            raise ModelError(
                f"{spec}: holds a {config.arch}, not a {arch}; leave out the architecture or pick the right model"
            )
        model = build_detector(config)
        model.load_state_dict(state)
        return model.eval()

    if not spec.endswith((".pth", ".pt")) or not exists(spec, options):
        raise ModelError(
            f"{spec}: neither a trained detector folder (model.json + model.pt from train-detector) "
            "nor a detector weights file (.pth, e.g. torchvision's fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)"
        )
    buffer = io.BytesIO(read_bytes(spec, options))
    buffer.name = spec  # named in load_detector_weights' messages
    num_classes, norm = _file_layout(buffer, spec)
    buffer.seek(0)
    config = DetectorConfig(arch=arch or DEFAULT_COCO_ARCH, num_classes=num_classes, norm=norm)
    model = build_detector(config)
    try:
        load_detector_weights(model, buffer)
    except ValueError as error:
        raise ModelError(f"{error}; pass the architecture the file was saved from") from None
    return model.eval()


def _file_layout(buffer: io.BytesIO, spec: str) -> tuple[int, str]:
    """(classes, norm) of a detector state_dict file: how many rows its box classifier has (91
    when it has none), and "batch" when it has BatchNorm counters (a detector trained here from
    scratch), else "frozen" (torchvision's files: FrozenBatchNorm2d has no counters)."""
    import torch

    try:
        state = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors: not a state_dict file
        raise ModelError(
            f"{spec}: not a readable torch state_dict ({type(error).__name__}); expected a detector weights file"
        ) from None
    if not isinstance(state, dict):
        return 91, "frozen"  # load_detector_weights says what is wrong with it
    weight = state.get("roi_heads.box_predictor.cls_score.weight")
    norm = "batch" if any(key.endswith("num_batches_tracked") for key in state) else "frozen"
    return (int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 91), norm
