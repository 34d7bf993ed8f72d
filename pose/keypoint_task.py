"""The top-down keypoint task between a `person_crops` batch and the figures: the training recipe,
the batch transforms (the CPU recipe's from the stored crops, the reference recipes' from the
original images), the loss, prediction with flip test, the evaluators (PCK at 0.5 on the heatmaps, and COCO AP)
and the evaluation picture. `pose.engine` trains and evaluates any task; `pose.recipes` names the
reference recipes.

Everything here is plain numpy/torch/pyarrow: `jobs/train.py` wires it to Ray Data and Ray Train,
and a test or a notebook calls it directly on a list of batches.

A batch is a dict of columns, numpy arrays or lists (Ray Data's `batch_format="numpy"`, or
`pyarrow.Table.to_pydict()`); tensors are accepted wherever the model consumes a column.
Coordinates follow `pose.geometry`: (x, y) pixels, top-left origin, integer = pixel centre. Three
frames meet here: the crop (`person_crops`), the model input (`recipe.input_size`) and the
original image (COCO's); the affine matrices between them are (2, 3) float64.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pose.augment import AugmentConfig, jitter_colors, normalize, topdown_sample
from pose.draw import crop_panel, heatmap_overlay, side_by_side, stacked
from pose.geometry import apply_affine, box_to_center_size, compose_affine, invert_affine
from pose.heatmaps import HeatmapCodec, to_image_coordinates
from pose.heatmaps import flip_test as average_flip_test
from pose.images import decode_image, open_image
from pose.joints import NUM_JOINTS, PERSON_CATEGORY
from pose.metrics import PckAccumulator, coco_keypoint_ap, oks_nms
from pose.models.keypoints import KeypointModelConfig
from pose.precision import Precision
from pose.topdown import instance_score

# Flip with the joint swap and colour jitter only: the CPU recipe's budget ends long before the
# model fits its training data, and geometric jitter makes it learn more slowly within that budget.
CPU_AUGMENT = AugmentConfig(scale=0.0, rotation=0.0, rotation_prob=0.0, half_body_prob=0.0)


Framework = Literal["pose-jobs", "simple-baselines", "hrnet", "mmpose"]


@dataclass(frozen=True)
class RTMPoseSettings:
    """What MMPose's RTMPose configs set beyond a td-hm recipe (`rtmpose-m_8xb256-420e_coco-256x192.py`, 1.3.2).

    - Targets: `SimCCLabel(input_size, sigma=simcc_sigma (x, y) in bins, simcc_split_ratio, normalize=False)`
      (`pose.codecs.SimCCLabelEncoder`).
    - Loss: `KLDiscretLoss(beta=kl_beta, label_softmax=True, label_beta (its default 10), use_target_weight=True)`
      (`kl_discrete_loss`).
    - Weight decay: `paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True)`: no decay on
      the parameters of BatchNorm layers nor on any parameter named `bias` (`rtmpose_param_groups`).
    - Schedule after the LinearLR warm-up: the rate stays at lr until `cosine_begin_epoch`, then
      `CosineAnnealingLR(eta_min, T_max = epochs - cosine_begin_epoch)` by iteration to the last epoch.
    - EMA: `EMAHook(ExpMomentumEMA, momentum=ema_momentum, gamma=ema_gamma (its default), update_buffers=True)`,
      the averaged weights validated and saved (`pose.ema.ExpMomentumEMA`).
    - Two training pipelines: `augment` of the recipe and `pixel_augment` for the first `epochs - stage2_epochs`
      epochs, then `stage2_augment` and `stage2_pixel_augment` (`PipelineSwitchHook(switch_epoch=epochs -
      stage2_epochs)`); the pixel steps (`pose.augment.RTMPosePixelAugment`) run on the warped crop.
    - `backbone_checkpoint`: the file the config's backbone `init_cfg` loads (prefix `backbone.`): a CSPNeXt
      trained on AIC + COCO with UDP heatmaps, given by the user (`--backbone-weights`), never downloaded.
    """

    simcc_sigma: tuple[float, float] = (4.9, 5.66)
    simcc_split_ratio: float = 2.0
    kl_beta: float = 10.0
    label_softmax: bool = True
    label_beta: float = 10.0
    norm_decay_mult: float = 0.0
    bias_decay_mult: float = 0.0
    cosine_begin_epoch: int = 210
    eta_min: float = 2e-4  # absolute, as the config writes it (base_lr x 0.05); not scaled with the batch
    ema_momentum: float = 0.0002
    ema_gamma: int = 2000
    stage2_epochs: int = 30
    stage2_augment: object = None  # pose.augment.MMPoseAugment
    pixel_augment: object = None  # pose.augment.RTMPosePixelAugment
    stage2_pixel_augment: object = None
    backbone_checkpoint: str = "cspnext-m_udp-aic-coco_210e-256x192-f2f7d6f6_20230130.pth"

    def __post_init__(self):
        object.__setattr__(self, "simcc_sigma", tuple(float(v) for v in self.simcc_sigma))

    def to_dict(self) -> dict:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["simcc_sigma"] = list(self.simcc_sigma)
        values["stage2_augment"] = _augment_to_dict(self.stage2_augment)
        for name in ("pixel_augment", "stage2_pixel_augment"):
            values[name] = getattr(self, name).to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> RTMPoseSettings:
        values = dict(values)
        from pose.augment import RTMPosePixelAugment

        values["stage2_augment"] = _augment_from_dict(dict(values["stage2_augment"]), None)
        for name in ("pixel_augment", "stage2_pixel_augment"):
            values[name] = RTMPosePixelAugment(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in values[name].items()}
            )
        return cls(**values)


@dataclass(frozen=True)
class KeypointRecipe:
    """How to train a top-down keypoint model: network, input, targets, optimiser, schedule, augmentation.

    `framework` says whose pipeline the recipe reproduces:
    - "pose-jobs" (the defaults, `--recipe cpu`): for training from scratch in minutes on a few CPU cores (bf16 where
      they compute it natively, `pose.precision`): a ResNet-18 cut after `layer2` (stride 8) with one 64-channel
      deconvolution to stride-4 heatmaps, 128x96 input, a global batch of 32, AdamW 2e-3 with a cosine over 12 epochs.
      It reads the stored person crops (`person_crops`), encodes pose-jobs' unbiased targets (`pose.heatmaps`) and keeps
      the flip and colour jitter but not the scale, rotation and half-body jitter, which only slow fitting at that
      budget (`CPU_AUGMENT`).
    - "simple-baselines", "hrnet", "mmpose": the reference's own pipeline, point by point (`pose.recipes` names
      them and docs/recipes.md lists every setting with its source): the network under MMPose's state_dict names
      (`pose.checkpoints.build_network`), crops warped from the original image with the framework's crop
      convention and augmentation (`pose.augment` `ReleaseAugment` / `MMPoseAugment`), the framework's targets
      (`pose.codecs` encoders) and, at inference, its decoder and flip test: a trained run is run exactly as a
      published file of the same family (`spec()`).

    `batch_size` is the global batch: N workers take batch_size / N each. `sigma` is in heatmap pixels.
    `warmup_steps` linear warm-up steps, from `warmup_start_factor` x lr for MMPose's LinearLR.
    `rtmpose` holds the settings of MMPose's RTMPose configs (SimCC targets, KL loss, EMA, two pipelines); None
    for the heatmap recipes.
    """

    backbone: str = "resnet18"  # pose-jobs: resnet18 | resnet34 | resnet50; frameworks: pose.checkpoints.ARCHITECTURES
    backbone_stages: int = 2  # ResNet stages kept: 2 cuts after layer2 (stride 8), 4 is the whole net
    deconv_layers: int = 1  # 4x4 stride-2 deconvolutions up to the heatmaps' stride 4
    input_size: tuple[int, int] = (96, 128)  # (w, h)
    deconv_channels: int = 64
    skips: bool = False  # add the backbone stages to the deconvolutions of the same stride (KeypointModelConfig)
    sigma: float = 2.0
    epochs: int = 12
    batch_size: int = 32  # global: split over the workers (2 workers take 16 each)
    lr: float = 2e-3
    schedule: Literal["cosine", "multistep"] = "cosine"
    lr_steps: tuple[int, ...] = ()  # epochs at which "multistep" divides the rate by 10
    warmup_steps: int = 100  # linear warm-up, in optimiser steps
    warmup_start_factor: float | None = (
        None  # MMPose's LinearLR starts at this fraction of lr; None: (step + 1) / warmup_steps
    )
    base_batch_size: int | None = None  # the batch `lr` is meant for when the batch changes (None: batch_size)
    optimizer_type: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 1e-4  # AdamW's decoupled decay (Adam: none)
    flip_test: bool = True
    augment: object = CPU_AUGMENT  # AugmentConfig (pose-jobs) | ReleaseAugment | MMPoseAugment
    name: str = "cpu"
    framework: Framework = "pose-jobs"
    heatmap_codec: Literal["pose-jobs", "msra", "dark", "udp", "simcc"] = "pose-jobs"
    bgr: bool = False  # the network sees BGR pixels (the Simple Baselines release reads images with OpenCV)
    rtmpose: RTMPoseSettings | None = None

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "lr_steps", tuple(int(v) for v in self.lr_steps))
        stride = self.model_config().backbone_stride if self.framework == "pose-jobs" else 32
        if any(v % stride for v in self.input_size):
            raise ValueError(
                f"input_size {self.input_size}: width and height must be multiples of {stride} (the backbone's stride)"
            )
        if isinstance(self.augment, AugmentConfig) and self.augment.input_size != self.input_size:
            object.__setattr__(self, "augment", replace(self.augment, input_size=self.input_size))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(w, h) of the heatmaps (stride 4)."""
        return self.input_size[0] // 4, self.input_size[1] // 4

    def model_config(self) -> KeypointModelConfig:
        """The pose-jobs network (`framework` "pose-jobs" only; the others use `spec()`)."""
        return KeypointModelConfig(
            backbone=self.backbone if self.framework == "pose-jobs" else "resnet50",
            input_size=self.input_size,
            deconv_channels=self.deconv_channels,
            deconv_layers=self.deconv_layers,
            backbone_stages=self.backbone_stages,
            skips=self.skips,
        )

    def spec(self):
        """The `pose.checkpoints.CheckpointSpec` a model of this recipe is run as (a framework recipe only)."""
        from pose.checkpoints import CheckpointSpec

        if self.framework == "pose-jobs":
            raise ValueError("the pose-jobs recipes have no published counterpart")
        return CheckpointSpec(self.framework, self.backbone, self.input_size, self.heatmap_codec, self.bgr)

    def build_network(self) -> torch.nn.Module:
        """A new network, initialised as the reference initialises it before ImageNet weights are loaded."""
        if self.framework == "pose-jobs":
            from pose.models.keypoints import build_keypoint_model

            return build_keypoint_model(self.model_config())
        from pose.checkpoints import build_network

        if self.rtmpose is not None:
            from pose.models.rtmpose import init_head

            return init_head(build_network(self.spec()))
        return _reference_init(build_network(self.spec()))

    def crop(self):
        """How a person box is cut to this recipe's input (`pose.topdown.CropConvention`)."""
        from pose.topdown import CropConvention

        if self.framework == "pose-jobs":
            return CropConvention(self.input_size, self.augment.padding, "pose-jobs")
        from pose.checkpoints import crop_convention

        return crop_convention(self.spec())

    def codec(self) -> HeatmapCodec:
        """pose-jobs' heatmap codec (the "pose-jobs" framework)."""
        return HeatmapCodec(input_size=self.input_size, heatmap_size=self.model_config().heatmap_size, sigma=self.sigma)

    def target_encoder(self):
        """The reference's targets (`pose.codecs` encoders; framework recipes): heatmaps, or RTMPose's SimCC labels."""
        from pose.codecs import SimCCLabelEncoder, encoder_for

        if self.rtmpose is not None:
            return SimCCLabelEncoder(self.input_size, self.rtmpose.simcc_sigma, self.rtmpose.simcc_split_ratio)
        return encoder_for(self.heatmap_codec, self.input_size, self.heatmap_size, self.sigma)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW (pose-jobs) or Adam without weight decay (Simple Baselines, HRNet, MMPose td-hm) over all parameters;
        RTMPose: AdamW with its parameter groups (`rtmpose_param_groups`)."""
        if self.rtmpose is not None:
            return torch.optim.AdamW(
                rtmpose_param_groups(model, self.weight_decay, self.rtmpose), lr=self.lr, weight_decay=self.weight_decay
            )
        if self.optimizer_type == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning-rate schedule, stepped once per optimiser step: a linear warm-up over `warmup_steps` (from
        `warmup_start_factor` x lr as MMPose's LinearLR by iteration, else (step + 1) / warmup_steps), then a cosine to
        0 over the remaining steps of `epochs`, or a division by 10 at each epoch of `lr_steps` (MultiStepLR by epoch).
        RTMPose (`rtmpose`): lr until `cosine_begin_epoch`, then a cosine from lr to the absolute `eta_min` at the end
        of `epochs`, by iteration (mmengine's CosineAnnealingLR converted to iterations). Its state_dict is the step
        count, so a resumed run continues the same curve."""
        total = max(1, self.epochs * steps_per_epoch)
        # pose-jobs' ramp is kept within the first half of a short run; LinearLR always runs its iterations
        warmup = min(self.warmup_steps, total // 2) if self.warmup_start_factor is None else self.warmup_steps
        milestones = [epoch * steps_per_epoch for epoch in self.lr_steps]
        start = self.warmup_start_factor

        def factor(step: int) -> float:
            if not warmup:
                ramp = 1.0
            elif start is None:
                ramp = min(1.0, (step + 1) / warmup)
            else:  # mmengine's LinearLR(start_factor, begin=0, end=warmup): start at step 0, 1 from step warmup - 1 on
                ramp = start + (1.0 - start) * min(1.0, step / max(1, warmup - 1))
            if self.schedule == "multistep":
                return ramp * 0.1 ** sum(step >= m for m in milestones)
            if self.rtmpose is not None:
                begin = self.rtmpose.cosine_begin_epoch * steps_per_epoch
                floor = self.rtmpose.eta_min / self.lr
                progress = min(1.0, max(0.0, (step - begin) / max(1, total - begin)))
                return ramp * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def with_batch_size(self, batch_size: int) -> KeypointRecipe:
        """The recipe at another global batch, the learning rate scaled linearly from `base_batch_size` (MMPose's
        `auto_scale_lr` rule; the releases have none, and scale from the batch they trained with)."""
        if batch_size == self.batch_size:
            return self
        return replace(self, batch_size=batch_size, lr=self.lr * batch_size / (self.base_batch_size or self.batch_size))

    def to_dict(self) -> dict:
        """Plain JSON-ready values, for logs, checkpoints and `--show-recipe`."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["input_size"], values["lr_steps"] = list(self.input_size), list(self.lr_steps)
        values["augment"] = _augment_to_dict(self.augment)
        values["rtmpose"] = self.rtmpose.to_dict() if self.rtmpose is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> KeypointRecipe:
        values = dict(values)
        # Runs saved before the backbone could be cut had the whole ResNet and three deconvolutions.
        values.setdefault("backbone_stages", 4)
        values.setdefault("deconv_layers", 3)
        values["augment"] = _augment_from_dict(dict(values.get("augment", {})), values.get("input_size", (96, 128)))
        if values.get("rtmpose") is not None:
            values["rtmpose"] = RTMPoseSettings.from_dict(values["rtmpose"])
        return cls(**values)


def rtmpose_param_groups(model: torch.nn.Module, weight_decay: float, settings: RTMPoseSettings) -> list[dict]:
    """The parameter groups mmengine's DefaultOptimWrapperConstructor makes for RTMPose's `paramwise_cfg`: the
    parameters of BatchNorm, GroupNorm, LayerNorm and InstanceNorm layers decay by `norm_decay_mult` x
    `weight_decay`, any other parameter named `bias` by `bias_decay_mult` x; the rest by `weight_decay` (RTMPose's
    ScaleNorm `g`, Scale and GAU `gamma`/`beta` included: they are not in norm layers by type). A parameter
    shared by two modules is listed once (`bypass_duplicate`). Up to three groups, each in `modules()` order."""
    norms = (
        torch.nn.modules.batchnorm._BatchNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.GroupNorm,
        torch.nn.LayerNorm,
    )
    decay, norm_params, biases, seen = [], [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if isinstance(module, norms):
                norm_params.append(param)
            elif name == "bias":
                biases.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": norm_params, "weight_decay": weight_decay * settings.norm_decay_mult},
        {"params": biases, "weight_decay": weight_decay * settings.bias_decay_mult},
    ]
    return [group for group in groups if group["params"]]


def _augment_to_dict(augment) -> dict:
    if isinstance(augment, AugmentConfig):
        return {"kind": "pose-jobs", **vars(augment), "input_size": list(augment.input_size)}
    from pose.augment import MMPoseAugment

    return {"kind": "mmpose" if isinstance(augment, MMPoseAugment) else "release", **augment.to_dict()}


def _augment_from_dict(values: dict, input_size) -> object:
    kind = values.pop("kind", "pose-jobs")
    if kind == "pose-jobs":
        values["input_size"] = tuple(values.get("input_size", input_size))
        return AugmentConfig(**values)
    from pose.augment import MMPoseAugment, ReleaseAugment

    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return MMPoseAugment(**values) if kind == "mmpose" else ReleaseAugment(**values)


def _reference_init(network: torch.nn.Module) -> torch.nn.Module:
    """Simple Baselines', HRNet's and MMPose's initialisation of a keypoint network before ImageNet weights:
    convolutions and deconvolutions normal(0, 0.001) with zero biases, BatchNorm (1, 0)."""
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return network


# --------------------------------------------------------------------------------------------
# From person_crops rows to model inputs and targets


def _stacked(column, dtype) -> np.ndarray:
    """A column of equal-length lists or arrays (or a 2-D array) as one array."""
    return np.asarray([np.asarray(value, dtype) for value in column], dtype)


class KeypointBatchTransform:
    """`person_crops` rows -> model inputs and heatmap targets, as a Ray Data `map_batches` callable.

    Each row's JPEG crop is decoded, warped to the model input by `topdown_sample` (with
    augmentation when `train`) and its keypoints encoded by the recipe's codec.

    Randomness: row r of epoch e draws its augmentation from `np.random.default_rng([seed, e,
    annotation_id_r])`. So a batch gives the same samples whatever its size, order or worker
    (a retried task or a resumed run sees the same data), and each epoch sees new ones. The epoch
    is the batch's `epoch` column when it has one (one value per row), else the `epoch` given to
    the constructor: build the transform per epoch (`fn_constructor_kwargs={"epoch": e}`) or add
    the column upstream. Evaluation (`train=False`) has no randomness.

    Output columns (N rows):
      image: (N, h, w, 3) uint8, the model input (normalise on the device with `pose.augment.normalize`);
      color: (N, 3) float32, its colour-jitter factors (`pose.augment.jitter_colors`, on the device; ones
        without augmentation);
      target: (N, K, hh, ww) float16 heatmaps; target_weight: (N, K) float32;
      keypoints: (N, K, 2) float32, the true joints in input pixels (0 where unlabelled);
      input_from_crop, image_from_input: (N, 2, 3) float64;
      annotation_id, image_id: (N,) int64; area: (N,) float64 (the annotation's, for OKS);
      bbox: (N, 4) float64, the person box [x, y, w, h] in image coordinates;
      box_score: (N,) float64, the row's `box_score` (a detector's) or 1.
    """

    def __init__(self, recipe: KeypointRecipe, train: bool, seed: int = 0, epoch: int = 0):
        self.recipe, self.train, self.seed, self.epoch = recipe, train, seed, epoch
        self.codec = recipe.codec()

    def __call__(self, batch: dict) -> dict:
        annotation_ids = np.asarray(batch["annotation_id"], np.int64)
        count = len(annotation_ids)
        epochs = np.broadcast_to(np.asarray(batch.get("epoch", self.epoch), np.int64), (count,))
        bboxes = _stacked(batch["bbox"], np.float64)
        keypoints = _stacked(batch["keypoints"], np.float64).reshape(count, NUM_JOINTS, 3)
        image_from_crop = _stacked(batch["image_from_crop"], np.float64).reshape(count, 2, 3)

        samples = []
        for i in range(count):
            rng = np.random.default_rng([self.seed, int(epochs[i]), int(annotation_ids[i])]) if self.train else None
            crop = open_image(bytes(batch["crop"][i]))  # decoded by topdown_sample, at the size it needs
            samples.append(topdown_sample(crop, bboxes[i], keypoints[i], rng, self.recipe.augment))

        joints = np.stack([s["keypoints"] for s in samples]) if samples else np.zeros((0, NUM_JOINTS, 2), np.float32)
        visible = np.stack([s["visible"] for s in samples]) if samples else np.zeros((0, NUM_JOINTS), np.float32)
        target, target_weight = self.codec.encode(joints, visible)
        input_from_crop = np.stack([s["input_from_crop"] for s in samples]) if samples else np.zeros((0, 2, 3))
        w, h = self.recipe.input_size
        return {
            "image": np.stack([s["image"] for s in samples]) if samples else np.zeros((0, h, w, 3), np.uint8),
            "color": np.stack([s["color"] for s in samples]) if samples else np.ones((0, 3), np.float32),
            "target": target.astype(np.float16),
            "target_weight": target_weight,
            "keypoints": joints,
            "input_from_crop": input_from_crop,
            "image_from_input": np.array(
                [compose_affine(image_from_crop[i], invert_affine(input_from_crop[i])) for i in range(count)],
                np.float64,
            ).reshape(count, 2, 3),
            "annotation_id": annotation_ids,
            "image_id": np.asarray(batch["image_id"], np.int64),
            "area": np.asarray(batch["area"], np.float64),
            "bbox": np.array([_box_through(bboxes[i], image_from_crop[i]) for i in range(count)], np.float64).reshape(
                count, 4
            ),
            # a detected person's box score, when the rows come from a detector (1 for true boxes)
            "box_score": np.asarray(batch["box_score"], np.float64) if "box_score" in batch else np.ones(count),
        }


def _box_through(box_xywh: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The axis-aligned box [x, y, w, h] around a box's corners mapped through `matrix` (2, 3)."""
    x, y, w, h = box_xywh
    corners = apply_affine(np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]), matrix)
    low, high = corners.min(0), corners.max(0)
    return np.array([*low, *(high - low)])


# --------------------------------------------------------------------------------------------
# Loss, prediction, training and evaluation


def keypoint_loss(predicted: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
    """Simple Baselines' JointsMSELoss with target weights: 0.5 x the mean over joints of the
    mean squared error between weighted heatmaps, i.e. 0.5 * mean(((predicted - target) * w)^2)
    over (N, K, h, w). predicted, target: (N, K, h, w); target_weight: (N, K). Computed in float32."""
    weight = target_weight.float()[..., None, None]
    return 0.5 * ((predicted.float() - target.float()) * weight).pow(2).mean()


def kl_discrete_loss(
    predicted: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    target_weight: torch.Tensor,
    beta: float = 10.0,
    label_softmax: bool = True,
    label_beta: float = 10.0,
) -> torch.Tensor:
    """MMPose's `KLDiscretLoss` (`use_target_weight=True`, no mask) per sample: for each axis, the mean over the
    bins of KL(labels || softmax(beta x logits)) per joint, the labels softmax(label_beta x labels) when
    `label_softmax`; weighted by `target_weight`, summed over both axes and the joints, divided by K.

    predicted: (simcc_x (N, K, Wx), simcc_y (N, K, Wy)) logits; target: the SimCC labels of the same shapes;
    target_weight (N, K). Returns (N,) float32: MMPose's loss is the sum of these over the batch."""
    n, k, _ = predicted[0].shape
    weight = target_weight.float().reshape(-1)
    loss = torch.zeros(n * k, device=weight.device)
    for logits, labels in zip(predicted, target):
        log_p = torch.log_softmax(logits.float().reshape(n * k, -1) * beta, dim=1)
        labels = labels.float().reshape(n * k, -1)
        if label_softmax:
            labels = torch.softmax(labels * label_beta, dim=1)
        loss = loss + torch.nn.functional.kl_div(log_p, labels, reduction="none").mean(dim=1) * weight
    return loss.reshape(n, k).sum(dim=1) / k


def _model_input(
    images: np.ndarray | torch.Tensor, device: torch.device | str, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W) on `device` (the uint8 travels, not the
    float); float input is taken as already normalised (N, 3, H, W)."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = normalize(images.to(device, non_blocking=True))
    else:
        images = images.to(device, non_blocking=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format)


def _training_input(batch: dict, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A training batch's uint8 images (N, H, W, 3), colour-jittered on `device` by the batch's
    `color` factors when it has them (`pose.augment.jitter_colors`), then normalised as
    `_model_input` does."""
    if "color" not in batch:
        return _model_input(batch["image"], device, channels_last)
    images = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
    images = jitter_colors(images, torch.as_tensor(batch["color"]).to(device, non_blocking=True))
    return _model_input(normalize(images), device, channels_last)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    flip_test: bool,
    codec: HeatmapCodec,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Keypoints of a batch of model inputs, the model in eval mode.

    images: uint8 (N, h, w, 3) (normalised here, on the model's device) or normalised float
    (N, 3, h, w). With `flip_test` the heatmaps are the mean of the output and the mirrored output
    on the mirrored input (`pose.heatmaps.flip_test`). Returns keypoints (N, K, 2) float64 in input
    pixels and scores (N, K) float32 from `codec.decode`, and the heatmaps (N, K, h', w') float32
    on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    inputs = _model_input(images, device, channels_last)
    with Precision(amp_dtype).autocast(device):
        heatmaps = model(inputs).float()
        if flip_test:
            heatmaps = average_flip_test(heatmaps, model(inputs.flip(-1)).float())
    heatmaps = heatmaps.cpu()
    keypoints, scores = codec.decode(heatmaps)
    return keypoints, scores, heatmaps


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return (
            values.detach().float().cpu().numpy()
            if values.dtype in (torch.float16, torch.bfloat16)
            else values.detach().cpu().numpy()
        )
    return np.asarray(values)


class KeypointEvaluator:
    """The validation metrics over a whole split, fed batch by batch.

    - PCK: Simple Baselines' heatmap accuracy at 0.5 (`pose.metrics.PckAccumulator`), summed over all batches.
    - COCO keypoint AP/AR by pycocotools, with the instances scored as Simple Baselines does:
      box score (1.0 for ground-truth boxes) x the mean confidence of the joints above
      `joint_threshold`; OKS-NMS (`nms_threshold`) within each image before COCOeval, on the areas of
      the padded, aspect-fixed boxes the model saw (as Simple Baselines and MMPose suppress). Every
      image of `ground_truth` counts, seen or not, as COCO counts a split; `seen_images_only` scores
      only the images that were seen (a partial pass, e.g. a benchmark's few batches).
    """

    def __init__(
        self,
        codec: HeatmapCodec,
        ground_truth: dict | None,
        *,
        joint_threshold: float = 0.2,
        nms_threshold: float = 0.9,
        padding: float = 1.25,
        seen_images_only: bool = False,
    ):
        self.codec = codec
        self.ground_truth = ground_truth
        self.joint_threshold, self.nms_threshold = joint_threshold, nms_threshold
        self.padding, self.seen_images_only = padding, seen_images_only
        self.pck = PckAccumulator()
        self.instances: list[dict] = []

    def update(self, heatmaps_pred, target, target_weight, keypoints_image, scores, batch_meta: dict) -> None:
        """heatmaps_pred, target: (N, K, h, w); target_weight: (N, K); keypoints_image: (N, K, 2)
        in image pixels; scores: (N, K) joint confidences; batch_meta: the batch's `image_id`,
        `annotation_id`, `bbox` (image coordinates) and optionally `box_score` (N,) (detections)."""
        weight = _numpy(target_weight).astype(np.float32)
        self.pck.update(
            _numpy(heatmaps_pred).astype(np.float32), _numpy(target).astype(np.float32) * (weight > 0)[..., None, None]
        )

        keypoints_image, scores = np.asarray(keypoints_image, np.float64), np.asarray(scores, np.float64)
        image_ids = _numpy(batch_meta["image_id"]).astype(np.int64)
        boxes = _numpy(batch_meta["bbox"]).astype(np.float64).reshape(-1, 4)
        box_scores = _numpy(batch_meta["box_score"]) if "box_score" in batch_meta else np.ones(len(image_ids))
        aspect_ratio = self.codec.input_size[0] / self.codec.input_size[1]
        for i in range(len(image_ids)):
            self.instances.append(
                {
                    "image_id": int(image_ids[i]),
                    "keypoints": np.concatenate([keypoints_image[i], scores[i][:, None]], axis=1),
                    "score": instance_score(float(box_scores[i]), scores[i], self.joint_threshold),
                    "area": float(np.prod(box_to_center_size(boxes[i], aspect_ratio, self.padding)[1])),
                }
            )

    def results_json(self) -> list[dict]:
        """The kept instances (after OKS-NMS per image) in COCO's results format: image_id,
        category_id 1, keypoints as a flat list of 17 x (x, y, confidence), score."""
        by_image: dict[int, list[dict]] = {}
        for instance in self.instances:
            by_image.setdefault(instance["image_id"], []).append(instance)
        results = []
        for image_id in sorted(by_image):
            group = by_image[image_id]
            for index in oks_nms(group, self.nms_threshold):
                instance = group[index]
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": PERSON_CATEGORY["id"],
                        "keypoints": [round(float(v), 3) for v in instance["keypoints"].reshape(-1)],
                        "score": float(instance["score"]),
                    }
                )
        return results

    def result(self) -> dict:
        """{"pck", "ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l",
        "instances"}: the AP/AR values are NaN without ground truth; "instances" counts the
        instances seen (before NMS)."""
        _, pck, _ = self.pck.result()
        if self.ground_truth is None:
            ap = dict.fromkeys(
                ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l"), float("nan")
            )
        else:
            image_ids = sorted({instance["image_id"] for instance in self.instances}) if self.seen_images_only else None
            ap = coco_keypoint_ap(self.ground_truth, self.results_json(), image_ids=image_ids)
        return {"pck": pck, **ap, "instances": len(self.instances)}


def ground_truth_from_tables(images: pa.Table, persons: pa.Table, split: str | None = None) -> dict:
    """The COCO keypoints dataset dict (images, annotations, categories) of the `images` and
    `persons` Parquet tables, for `coco_keypoint_ap` / pycocotools; only `split` if given.
    Annotations keep id, image_id, category_id, bbox, keypoints, num_keypoints, area, iscrowd (0/1)
    and segmentation (JSON-decoded: polygons or RLE)."""
    image_rows = images.select(["image_id", "split", "file_name", "width", "height"]).to_pylist()
    person_rows = persons.to_pylist()
    if split is not None:
        image_rows = [row for row in image_rows if row["split"] == split]
        person_rows = [row for row in person_rows if row["split"] == split]
    return {
        "images": [
            {
                "id": int(row["image_id"]),
                "file_name": row["file_name"],
                "width": int(row["width"]),
                "height": int(row["height"]),
            }
            for row in image_rows
        ],
        "annotations": [
            {
                "id": int(row["annotation_id"]),
                "image_id": int(row["image_id"]),
                "category_id": int(row["category_id"]),
                "bbox": [float(v) for v in row["bbox"]],
                "keypoints": [float(v) for v in row["keypoints"]],
                "num_keypoints": int(row["num_keypoints"]),
                "area": float(row["area"]),
                "iscrowd": int(bool(row["iscrowd"])),
                "segmentation": json.loads(row["segmentation"]) if row["segmentation"] else [],
            }
            for row in person_rows
        ],
        "categories": [dict(PERSON_CATEGORY)],
    }


# --------------------------------------------------------------------------------------------
# Picture


def evaluation_figure(
    crop_images,
    target_heatmaps,
    predicted_heatmaps,
    keypoints_true,
    keypoints_pred,
    *,
    visible=None,
    scores=None,
    count: int = 4,
    min_confidence: float = 0.2,
    panel_height: int = 256,
) -> Image.Image:
    """A few samples, one row each: the input with its true skeleton, the true heatmaps, the
    predicted heatmaps and the input with the predicted skeleton.

    crop_images: (N, h, w, 3) uint8 model inputs; target_heatmaps, predicted_heatmaps: (N, K, h', w');
    keypoints_true, keypoints_pred: (N, K, 2) in input pixels. `visible` (N, K) (e.g. the target
    weights) picks the true joints drawn, `scores` (N, K) the predicted joints drawn (those
    >= `min_confidence`); without them every joint is drawn. The first `count` samples are shown.
    """
    images = _numpy(crop_images).astype(np.uint8)
    count = min(count, len(images))
    if count == 0:
        raise ValueError("evaluation_figure needs at least one sample")
    target, predicted = _numpy(target_heatmaps).astype(np.float32), _numpy(predicted_heatmaps).astype(np.float32)
    true_xy, predicted_xy = _numpy(keypoints_true)[..., :2], _numpy(keypoints_pred)[..., :2]
    true_flag = 2.0 * (_numpy(visible) > 0) if visible is not None else np.full(true_xy.shape[:2], 2.0)
    confidence = _numpy(scores) if scores is not None else np.ones(predicted_xy.shape[:2])

    rows = []
    for i in range(count):
        panels = [
            crop_panel(images[i], np.concatenate([true_xy[i], true_flag[i][:, None]], 1), height=panel_height),
            heatmap_overlay(images[i], target[i]),
            heatmap_overlay(images[i], np.clip(predicted[i], 0.0, 1.0)),
            crop_panel(
                images[i],
                np.concatenate([predicted_xy[i], confidence[i][:, None]], 1),
                height=panel_height,
                visibility=False,
                min_confidence=min_confidence,
            ),
        ]
        titles = ["true", "true heatmaps", "predicted heatmaps", "predicted"] if i == 0 else None
        rows.append(side_by_side(panels, titles=titles, height=panel_height))
    return stacked(rows)


# --------------------------------------------------------------------------------------------
# The task as the training runner (`jobs/train.py`) drives it


def prepare_training_batch(recipe: KeypointRecipe, seed: int, batch: dict, epoch: int = 0) -> dict:
    """The CPU half of a training batch, safe on several threads or processes (the runner prepares
    batches ahead with it): pixels decoded, augmented and warped to the input, heatmap targets, and
    (the CPU recipe) the colour-jitter factors that `KeypointTask.device_inputs` applies.

    The CPU recipe warps the stored person crop (`KeypointBatchTransform`); the reference recipes warp
    the original image, as their references do (`prepare_reference_batch`)."""
    if recipe.framework != "pose-jobs":
        return prepare_reference_batch(recipe, seed, batch, epoch)
    prepared = KeypointBatchTransform(recipe, train=True, seed=seed, epoch=epoch)(batch)
    return {key: prepared[key] for key in ("image", "color", "target", "target_weight")}


def person_in_image(row_bbox, row_keypoints, row_image_from_crop) -> tuple[np.ndarray, np.ndarray]:
    """A `person_crops` row's box [x, y, w, h] and keypoints (17, 3) back in the original image's
    coordinates (the crop is an axis-aligned scale and shift of the image, so the box maps to a box)."""
    image_from_crop = np.asarray(row_image_from_crop, np.float64).reshape(2, 3)
    keypoints = np.asarray(row_keypoints, np.float64).reshape(NUM_JOINTS, 3).copy()
    labelled = keypoints[:, 2] > 0
    keypoints[labelled, :2] = apply_affine(keypoints[labelled, :2], image_from_crop)
    keypoints[~labelled, :2] = 0.0
    return _box_through(np.asarray(row_bbox, np.float64), image_from_crop), keypoints


def prepare_reference_batch(recipe: KeypointRecipe, seed: int, batch: dict, epoch: int = 0) -> dict:
    """A training batch of a reference recipe from `person_crops` rows that carry their original image's
    encoded bytes (`image`, added by the training job): each person's box is cut to the image and padded as
    the reference does (`pose.augment.release_center_scale` / `mmpose_center_scale`), augmentation parameters
    are drawn as it draws them (`pose.augment.sample_release` /
    `sample_mmpose`), the image is warped once to the input (`pose.augment.reference_sample`: the framework's
    matrix, OpenCV's bilinear warp) and the joints encoded by the reference's targets (`recipe.target_encoder()`).

    Randomness: row r of epoch e draws from `np.random.default_rng([seed, e, annotation_id_r])`, as the CPU
    recipe does. Returns image (N, h, w, 3) uint8 RGB, target (N, K, h', w') float16, target_weight (N, K).

    RTMPose (`recipe.rtmpose`): the steps of the pipeline of `epoch` (`rtmpose_augment`: stage 2 for the last
    `stage2_epochs`), the pixel steps drawn after the geometric ones from the same generator and applied to the crop
    (`pose.augment.sample_pixel_ops`, `apply_pixel_ops`), and SimCC labels as target_x (N, K, Wx) and target_y (N, K,
    Wy) float32 instead of target (float16 would round the labels that the KL loss softmaxes at beta 10)."""
    from pose.augment import (
        MMPoseAugment,
        apply_pixel_ops,
        mmpose_center_scale,
        reference_sample,
        release_center_scale,
        sample_mmpose,
        sample_pixel_ops,
        sample_release,
    )

    crop, encoder = recipe.crop(), recipe.target_encoder()
    mmpose = isinstance(recipe.augment, MMPoseAugment)
    sample_params = sample_mmpose if mmpose else sample_release
    annotation_ids = np.asarray(batch["annotation_id"], np.int64)
    epochs = np.broadcast_to(np.asarray(batch.get("epoch", epoch), np.int64), (len(annotation_ids),))
    images, joints, visible = [], [], []
    for i, annotation_id in enumerate(annotation_ids):
        image = decode_image(bytes(batch["image"][i]))  # as ingest decoded it to cut the crop
        box, keypoints = person_in_image(batch["bbox"][i], batch["keypoints"][i], batch["image_from_crop"][i])
        size = (image.shape[1], image.shape[0])
        # each reference's own box cleaning and centre/scale (MMPose fixes the aspect after its random transform)
        box_cs = mmpose_center_scale(box, size) if mmpose else release_center_scale(box, size, crop.aspect_ratio)
        if box_cs is None:  # a box the release drops: an empty sample with zero weights keeps the batch's size
            images.append(np.zeros((recipe.input_size[1], recipe.input_size[0], 3), np.uint8))
            joints.append(np.zeros((NUM_JOINTS, 2), np.float32))
            visible.append(np.zeros(NUM_JOINTS, np.float32))
            continue
        rng = np.random.default_rng([seed, int(epochs[i]), int(annotation_id)])
        augment, pixels = (
            rtmpose_augment(recipe, int(epochs[i])) if recipe.rtmpose is not None else (recipe.augment, None)
        )
        params = sample_params(rng, keypoints, *box_cs, image.shape[1], augment, crop.aspect_ratio)
        sample = reference_sample(image, keypoints, params, crop)
        if pixels is not None:
            sample["image"] = apply_pixel_ops(sample["image"], sample_pixel_ops(rng, pixels, recipe.input_size))
        images.append(sample["image"])
        joints.append(sample["keypoints"])
        visible.append(sample["visible"])
    w, h = recipe.input_size
    if recipe.rtmpose is not None:
        (target_x, target_y), target_weight = encoder.encode(
            np.stack(joints) if joints else np.zeros((0, NUM_JOINTS, 2)),
            np.stack(visible) if visible else np.zeros((0, NUM_JOINTS)),
        )
        return {
            "image": np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8),
            "target_x": target_x,
            "target_y": target_y,
            "target_weight": target_weight,
        }
    if not images:
        return {
            "image": np.zeros((0, h, w, 3), np.uint8),
            "target": np.zeros((0, NUM_JOINTS, *recipe.heatmap_size[::-1]), np.float16),
            "target_weight": np.zeros((0, NUM_JOINTS), np.float32),
        }
    target, target_weight = encoder.encode(np.stack(joints), np.stack(visible))
    return {
        "image": np.stack(images),
        "target": target.astype(np.float16),
        "target_weight": target_weight.astype(np.float32),
    }


def rtmpose_augment(recipe: KeypointRecipe, epoch: int) -> tuple:
    """(geometric, pixel) augmentation of RTMPose's pipeline in 0-based `epoch`: (`recipe.augment`,
    `rtmpose.pixel_augment`) in stage 1, the stage-2 pair from epoch `epochs - stage2_epochs` on, where mmdet's
    PipelineSwitchHook switches (its `before_train_epoch` sees the 0-based epoch about to run; 390 of 420)."""
    settings = recipe.rtmpose
    if epoch >= recipe.epochs - settings.stage2_epochs:
        return settings.stage2_augment, settings.stage2_pixel_augment
    return recipe.augment, settings.pixel_augment


class KeypointTask:
    """The top-down keypoint model on `person_crops`: train on `train`, validate on `val` with
    PCK at 0.5 on the heatmaps and COCO AP (ground-truth boxes). Batches are transformed in the training worker,
    with randomness from (seed, epoch, annotation id), so runs and resumed runs see the same data."""

    name = "keypoints"
    table = "person_crops"
    train_splits = ("train",)
    val_split = "val"
    holdout_every = 0
    fixed_input_size = True  # every batch has one shape (cuDNN may tune for it)
    feed_ahead = True  # batches cost CPU time (decode, augment, heatmaps): prepared on feed processes on GPUs
    cpu_bf16 = True  # bf16 autocast and channels-last on CPUs with native bf16: its step gains from them

    def __init__(
        self,
        recipe: KeypointRecipe = KeypointRecipe(),
        ground_truth: dict | None = None,
        seed: int = 0,
        backbone_weights: bytes | None = None,
        init_weights: tuple[str, bytes] | None = None,
    ):
        """`backbone_weights`: the bytes of an ImageNet torchvision ResNet state_dict file, loaded
        into the backbone of every new model (they cannot be downloaded here). `init_weights`:
        (name, bytes) of a published Simple Baselines file whose whole network starts training
        (`pose.checkpoints.keypoint_net_weights`); the recipe's network must be that one."""
        self.recipe, self.ground_truth, self.seed = recipe, ground_truth, seed
        self.backbone_weights, self.init_weights = backbone_weights, init_weights
        self.batch_size = recipe.batch_size
        self.eval_batch_size = 64
        self.codec = recipe.codec() if recipe.framework == "pose-jobs" else None  # the reference recipes: `pose_model`
        self.ema = None  # RTMPose: set by build_optimizer

    def config(self) -> dict:
        if self.recipe.framework != "pose-jobs":
            spec = self.recipe.spec()
            model = {
                "framework": spec.framework,
                "arch": spec.arch,
                "input_size": list(spec.input_size),
                "codec": spec.codec,
                "bgr": spec.bgr,
            }
            return {"task": self.name, "recipe": self.recipe.to_dict(), "model": model}
        return {"task": self.name, "recipe": self.recipe.to_dict(), "model": self.recipe.model_config().to_dict()}

    def build_model(self) -> torch.nn.Module:
        import io

        from pose.models.weights import check_fits

        model = self.recipe.build_network()
        if self.backbone_weights is not None:
            if self.recipe.rtmpose is not None:
                from pose.models.rtmpose import load_backbone_checkpoint

                load_backbone_checkpoint(model, self.backbone_weights, self.recipe.rtmpose.backbone_checkpoint)
            elif self.recipe.backbone.startswith("hrnet"):
                from pose.models.hrnet import load_imagenet_hrnet

                load_imagenet_hrnet(model, io.BytesIO(self.backbone_weights))
            else:
                from pose.models.keypoints import load_backbone_weights

                load_backbone_weights(model, io.BytesIO(self.backbone_weights))
        if self.init_weights is not None:
            name, data = self.init_weights
            if self.recipe.framework == "pose-jobs":
                from pose.checkpoints import keypoint_net_weights

                state = keypoint_net_weights(data, name)
            else:
                from pose.checkpoints import identify, mmpose_keys, read_checkpoint

                state, _ = read_checkpoint(data, name)
                state = mmpose_keys(state, identify(state, name))
            check_fits(
                state,
                model.state_dict(),
                f"{name} for the recipe's {self.recipe.backbone} network",
                optional=lambda key: key.endswith("num_batches_tracked"),
            )
            model.load_state_dict(state, strict=False)
        return model

    def build_optimizer(self, model: torch.nn.Module, steps_per_epoch: int):
        """The recipe's optimiser and schedule over `model`. RTMPose: also the task's `ema` of `model`
        (`pose.ema.ExpMomentumEMA`), updated after every optimiser step as mmengine's EMAHook does after each
        iteration; validation reads it (`averaged`)."""
        optimizer = self.recipe.optimizer(model)
        if self.recipe.rtmpose is not None:
            from pose.ema import ExpMomentumEMA

            settings = self.recipe.rtmpose
            self.ema = ema = ExpMomentumEMA(model, momentum=settings.ema_momentum, gamma=settings.ema_gamma)
            optimizer.register_step_post_hook(lambda *_: ema.update(model))
        return optimizer, self.recipe.scheduler(optimizer, steps_per_epoch)

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """The network to validate and to save: the EMA of `model` when the recipe keeps one (RTMPose: MMPose's
        EMAHook swaps the averaged weights in before validation and saves them as the checkpoint's state_dict),
        else `model`."""
        return self.ema.module if self.ema is not None else model

    def prepare_batch(self, batch: dict, epoch: int = 0) -> dict:
        """The CPU half of a training batch (`prepare_training_batch`)."""
        return prepare_training_batch(self.recipe, self.seed, batch, epoch)

    def preparer(self):
        """`prepare_batch` without the task, for the feed processes: the task may hold a weight
        file's bytes, which each process would otherwise receive."""
        return functools.partial(prepare_training_batch, self.recipe, self.seed)

    def device_inputs(self, prepared: dict, device: torch.device, generator: torch.Generator | None = None) -> dict:
        """A prepared batch on `device`: the uint8 images travel, then are colour-jittered there
        (`pose.augment.jitter_colors`) and normalised."""
        if self.recipe.framework != "pose-jobs":  # the reference's normalisation and channel order
            pixels = torch.as_tensor(prepared["image"]).to(device, non_blocking=True)
            images = self.pose_model(None).inputs(pixels)
            targets = ("target_x", "target_y") if self.recipe.rtmpose is not None else ("target",)
            return {
                "image": images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images,
                **{
                    key: torch.as_tensor(prepared[key]).to(device, non_blocking=True)
                    for key in (*targets, "target_weight")
                },
            }
        return {
            "image": _training_input(prepared, device, channels_last=device.type == "cuda"),
            "target": torch.as_tensor(prepared["target"]).to(device, non_blocking=True),
            "target_weight": torch.as_tensor(prepared["target_weight"]).to(device, non_blocking=True),
        }

    def loss(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """The heatmap MSE (`keypoint_loss`), or RTMPose's KL loss (`kl_discrete_loss`) as the mean over the batch of
        MMPose's per-sample loss: MMPose sums it over each GPU's 256 samples, a constant factor that AdamW cancels
        but for its epsilon (1e-8, against gradients 256 times larger there)."""
        settings = self.recipe.rtmpose
        if settings is not None:
            return kl_discrete_loss(
                model(inputs["image"]),
                (inputs["target_x"], inputs["target_y"]),
                inputs["target_weight"],
                settings.kl_beta,
                settings.label_softmax,
                settings.label_beta,
            ).mean()
        return keypoint_loss(model(inputs["image"]), inputs["target"], inputs["target_weight"])

    def pose_model(self, network: torch.nn.Module | None):
        """`network` run as this recipe's models are run at inference (`pose.topdown.PoseModel`)."""
        if self.recipe.framework == "pose-jobs":
            return TrainedPoseModel(network, self.recipe)
        from pose.checkpoints import pose_model

        return pose_model(self.recipe.spec(), network if network is not None else torch.nn.Identity())

    def evaluator(self):
        if self.recipe.framework != "pose-jobs":
            return ImageKeypointEvaluator(self)
        return KeypointTaskEvaluator(self)


class KeypointTaskEvaluator:
    """Rows of the validation split in, `KeypointEvaluator` figures out."""

    def __init__(self, task: KeypointTask):
        self.task = task
        self.transform = KeypointBatchTransform(task.recipe, train=False)
        self.figures = KeypointEvaluator(task.codec, task.ground_truth)

    def update(self, model: torch.nn.Module, batch: dict, device: torch.device) -> None:
        prepared = self.transform(batch)
        keypoints, scores, heatmaps = predict(
            model, prepared["image"], flip_test=self.task.recipe.flip_test, codec=self.task.codec
        )
        keypoints_image = to_image_coordinates(keypoints, prepared["image_from_input"])
        self.figures.update(heatmaps, prepared["target"], prepared["target_weight"], keypoints_image, scores, prepared)

    def result(self) -> dict:
        figures = self.figures.result()
        return {
            k: float(v)
            for k, v in figures.items()
            if isinstance(v, (int, float, np.floating)) and k in ("pck", "ap", "ap50", "ap75", "ar")
        }


class ImageKeypointEvaluator:
    """A reference recipe's validation: each `person_crops` row of the split (with its image's bytes, `image`)
    is cut from the original image at its ground-truth box and run through the one top-down chain
    (`pose.topdown`: the recipe's crop, decoder and flip test), then rescored and OKS-suppressed per image
    on the padded box areas, and scored by COCOeval over every image of the split (ground truth: the task's)."""

    def __init__(self, task: KeypointTask):
        self.task = task
        self.by_image: dict[int, list[tuple[np.ndarray, float]]] = {}

    def update(self, model: torch.nn.Module, batch: dict, device: torch.device) -> None:
        from pose.topdown import TopDownPredictor, cut_crops

        predictor = TopDownPredictor(
            self.task.pose_model(self.task.averaged(model)), device=device, flip_test=self.task.recipe.flip_test
        )
        for i, image_id in enumerate(np.asarray(batch["image_id"], np.int64)):
            image = decode_image(bytes(batch["image"][i]))  # as ingest decoded it to cut the crop
            box, _ = person_in_image(batch["bbox"][i], batch["keypoints"][i], batch["image_from_crop"][i])
            crops, backs, areas = cut_crops(image, box[None], predictor.crop)
            self.by_image.setdefault(int(image_id), []).append((predictor.keypoints(crops, backs)[0], float(areas[0])))

    def results_json(self) -> list[dict]:
        """The kept persons in COCO's results format (box score 1: ground-truth boxes)."""
        from pose.topdown import rescore_and_suppress

        results = []
        for image_id in sorted(self.by_image):
            keypoints = np.stack([k for k, _ in self.by_image[image_id]])
            areas = np.array([a for _, a in self.by_image[image_id]])
            kept, scores = rescore_and_suppress(keypoints, np.ones(len(keypoints)), areas)
            results += [
                {
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY["id"],
                    "keypoints": [round(float(v), 3) for v in keypoints[k].reshape(-1)],
                    "score": float(scores[k]),
                }
                for k in kept
            ]
        return results

    def result(self) -> dict:
        """{"ap", "ap50", "ap75", "ar"} over every image of the split (NaN without ground truth)."""
        if self.task.ground_truth is None:
            return dict.fromkeys(("ap", "ap50", "ap75", "ar"), float("nan"))
        figures = coco_keypoint_ap(self.task.ground_truth, self.results_json())
        return {k: float(figures[k]) for k in ("ap", "ap50", "ap75", "ar")}


class TrainedPoseModel:
    """A model trained here as a `pose.topdown.PoseModel`: pose-jobs' crop convention and heatmap
    codec (`pose.heatmaps`), the flip test without a shift (exact for its unbiased targets)."""

    def __init__(self, network: torch.nn.Module, recipe: KeypointRecipe):
        self.network, self.recipe, self.codec, self.crop = network, recipe, recipe.codec(), recipe.crop()
        self.name = f"pose-jobs {recipe.backbone} {recipe.input_size[1]}x{recipe.input_size[0]}"

    def inputs(self, crops: torch.Tensor) -> torch.Tensor:
        return normalize(crops)

    def decode(self, output: torch.Tensor, flipped_output: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        heatmaps = output if flipped_output is None else average_flip_test(output, flipped_output)
        return self.codec.decode(heatmaps)
