"""The top-down keypoint task between a `person_crops` batch and the figures: the training recipe,
the batch transform, the loss, prediction with flip test, the evaluator (seed PCK and COCO AP),
one training epoch, one evaluation pass and the evaluation picture.

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
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pose.augment import AugmentConfig, jitter_colors, normalize, topdown_sample
from pose.draw import crop_panel, heatmap_overlay, side_by_side, stacked
from pose.geometry import apply_affine, compose_affine, invert_affine
from pose.heatmaps import HeatmapCodec, flip_test as average_flip_test, to_image_coordinates
from pose.images import open_image
from pose.joints import NUM_JOINTS, PERSON_CATEGORY
from pose.metrics import PckAccumulator, coco_keypoint_ap, oks_nms
from pose.models.keypoints import KeypointModelConfig
from pose.precision import Precision
from pose.topdown import instance_score


# Flip with the joint swap and colour jitter only: the CPU recipe's budget ends long before the
# model fits its training data, and geometric jitter measured slower there (rotation 30 degrees,
# scale 25 %, half body p 0.1: PCK 0.43 against 0.50 after 4 of 8 epochs on the synthetic people).
CPU_AUGMENT = AugmentConfig(scale=0.0, rotation=0.0, rotation_prob=0.0, half_body_prob=0.0)


@dataclass(frozen=True)
class KeypointRecipe:
    """How to train the top-down keypoint model: input, heatmaps, optimiser, schedule, augmentation.

    The defaults are the CPU recipe, for training from scratch in about 20 minutes on 2 CPU cores
    with native bf16 (`pose.precision`; twice that in float32): a ResNet-18 cut after `layer2`
    (stride 8) with one 64-channel deconvolution to stride-4 heatmaps, 128x96 input, batch 16,
    AdamW 2e-3 with a cosine over 12 epochs (about 120,000 samples). It is far from converged
    (training and validation figures are equal), so its augmentation keeps the flip (with the
    joint swap) and colour jitter but not the scale, rotation and half-body jitter, which only
    slow fitting there (`CPU_AUGMENT`). See `SIMPLE_BASELINES_COCO` for the published GPU recipe.
    `sigma` is in heatmap pixels (Simple Baselines' 2 at 64x48 heatmaps). `augment.input_size` is
    always the recipe's `input_size`.
    """

    backbone: str = "resnet18"
    backbone_stages: int = 2  # ResNet stages kept: 2 cuts after layer2 (stride 8), 4 is the whole net
    deconv_layers: int = 1  # 4x4 stride-2 deconvolutions up to the heatmaps' stride 4
    input_size: tuple[int, int] = (96, 128)  # (w, h)
    deconv_channels: int = 64
    skips: bool = False  # add the backbone stages to the deconvolutions of the same stride (KeypointModelConfig)
    sigma: float = 2.0
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    schedule: Literal["cosine", "multistep"] = "cosine"
    lr_steps: tuple[int, ...] = ()  # epochs at which "multistep" divides the rate by 10
    warmup_steps: int = 100  # linear warm-up, in optimiser steps
    weight_decay: float = 1e-4  # AdamW's decoupled decay
    flip_test: bool = True
    augment: AugmentConfig = CPU_AUGMENT

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "lr_steps", tuple(int(v) for v in self.lr_steps))
        stride = self.model_config().backbone_stride
        if any(v % stride for v in self.input_size):
            raise ValueError(f"input_size {self.input_size}: width and height must be multiples of {stride} (the backbone's stride)")
        if self.augment.input_size != self.input_size:
            object.__setattr__(self, "augment", replace(self.augment, input_size=self.input_size))

    def model_config(self) -> KeypointModelConfig:
        return KeypointModelConfig(backbone=self.backbone, input_size=self.input_size, deconv_channels=self.deconv_channels,
                                   deconv_layers=self.deconv_layers, backbone_stages=self.backbone_stages,
                                   skips=self.skips)

    def crop(self):
        """How a person box is cut to this recipe's input (`pose.topdown.CropConvention`)."""
        from pose.topdown import CropConvention

        return CropConvention(self.input_size, self.augment.padding, "pose-jobs")

    def codec(self) -> HeatmapCodec:
        return HeatmapCodec(input_size=self.input_size, heatmap_size=self.model_config().heatmap_size, sigma=self.sigma)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW over all parameters (Simple Baselines: Adam, no decay)."""
        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning-rate schedule, stepped once per optimiser step (as `train_epoch` does):
        a linear warm-up over `warmup_steps`, then a cosine to 0 over the remaining steps of
        `epochs`, or a division by 10 at each epoch of `lr_steps`. Its state_dict is the step count,
        so a resumed run continues the same curve."""
        total = max(1, self.epochs * steps_per_epoch)
        warmup = min(self.warmup_steps, total // 2)
        milestones = [epoch * steps_per_epoch for epoch in self.lr_steps]

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
            if self.schedule == "multistep":
                return ramp * 0.1 ** sum(step >= m for m in milestones)
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def to_dict(self) -> dict:
        """Plain JSON-ready values, for logs and checkpoints."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["input_size"], values["lr_steps"] = list(self.input_size), list(self.lr_steps)
        values["augment"] = {**vars(self.augment), "input_size": list(self.input_size)}
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "KeypointRecipe":
        values = dict(values)
        # Runs saved before the backbone could be cut had the whole ResNet and three deconvolutions.
        values.setdefault("backbone_stages", 4)
        values.setdefault("deconv_layers", 3)
        augment = dict(values.pop("augment", {}))
        augment["input_size"] = tuple(augment.get("input_size", values.get("input_size", (96, 128))))
        return cls(**values, augment=AugmentConfig(**augment))


# Simple Baselines' ResNet-50 256x192 COCO recipe (70.4 AP on val2017 with ImageNet weights and
# detected boxes): Adam 1e-3, 140 epochs, /10 at 90 and 120, batch 32 per GPU x 4 GPUs.
SIMPLE_BASELINES_COCO = KeypointRecipe(
    backbone="resnet50",
    backbone_stages=4,
    deconv_layers=3,
    input_size=(192, 256),
    deconv_channels=256,
    sigma=2.0,
    epochs=140,
    batch_size=128,
    lr=1e-3,
    schedule="multistep",
    lr_steps=(90, 120),
    warmup_steps=0,
    weight_decay=0.0,
    augment=AugmentConfig(input_size=(192, 256)),
)


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
                [compose_affine(image_from_crop[i], invert_affine(input_from_crop[i])) for i in range(count)], np.float64
            ).reshape(count, 2, 3),
            "annotation_id": annotation_ids,
            "image_id": np.asarray(batch["image_id"], np.int64),
            "area": np.asarray(batch["area"], np.float64),
            "bbox": np.array([_box_through(bboxes[i], image_from_crop[i]) for i in range(count)], np.float64).reshape(count, 4),
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


def _model_input(images: np.ndarray | torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
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


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict:
    """One pass over `batches` (KeypointBatchTransform outputs, colour-jittered here by their
    `color` factors): forward, `keypoint_loss`,
    backward, optimiser step, then `scheduler.step()` (per step, see `KeypointRecipe.scheduler`).

    `amp_dtype` (torch.bfloat16 or torch.float16, the latter with a gradient scaler) runs the
    forward pass under autocast. `channels_last` feeds NHWC inputs; convert the model once with
    `model.to(memory_format=torch.channels_last)`. A non-finite loss raises FloatingPointError.
    Returns {"loss": mean over samples, "samples", "seconds", "samples_per_second"}.
    """
    device = torch.device(device)
    model.train()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total_loss, samples, started = 0.0, 0, time.perf_counter()
    for step, batch in enumerate(batches):
        inputs = _training_input(batch, device, channels_last)
        target = torch.as_tensor(batch["target"]).to(device, non_blocking=True)
        target_weight = torch.as_tensor(batch["target_weight"]).to(device, non_blocking=True)
        with Precision(amp_dtype).autocast(device):
            loss = keypoint_loss(model(inputs), target, target_weight)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step} of this epoch; stopping training (lower the learning rate?)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total_loss += value * len(inputs)
        samples += len(inputs)
    seconds = time.perf_counter() - started
    return {
        "loss": total_loss / max(samples, 1),
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / max(seconds, 1e-9),
    }


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    evaluator: "KeypointEvaluator",
    *,
    device: torch.device | str,
    flip_test: bool,
    codec: HeatmapCodec,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict:
    """Predict every batch (KeypointBatchTransform outputs, `train=False`) and feed `evaluator`;
    returns `evaluator.result()` plus "seconds". The model is moved to `device` by the caller."""
    started = time.perf_counter()
    for batch in batches:
        keypoints, scores, heatmaps = predict(model, batch["image"], flip_test=flip_test, codec=codec,
                                              amp_dtype=amp_dtype, channels_last=channels_last)
        keypoints_image = to_image_coordinates(keypoints, _numpy(batch["image_from_input"]))
        evaluator.update(heatmaps, batch["target"], batch["target_weight"], keypoints_image, scores, batch)
    return {**evaluator.result(), "seconds": time.perf_counter() - started}


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy() if values.dtype in (torch.float16, torch.bfloat16) else values.detach().cpu().numpy()
    return np.asarray(values)


class KeypointEvaluator:
    """The validation metrics over a whole split, fed batch by batch.

    - PCK: the seed's heatmap accuracy (`pose.metrics.PckAccumulator`), summed over all batches.
    - COCO keypoint AP/AR by pycocotools, with the instances scored as Simple Baselines does:
      box score (1.0 for ground-truth boxes) x the mean confidence of the joints above
      `joint_threshold`; OKS-NMS (`nms_threshold`) within each image before COCOeval. Only the
      images that were seen are evaluated, so a partial pass gives a fair (if noisy) number.
    """

    def __init__(self, codec: HeatmapCodec, ground_truth: dict | None, *, joint_threshold: float = 0.2, nms_threshold: float = 0.9):
        self.codec = codec
        self.ground_truth = ground_truth
        self.joint_threshold, self.nms_threshold = joint_threshold, nms_threshold
        self.pck = PckAccumulator()
        self.instances: list[dict] = []

    def update(self, heatmaps_pred, target, target_weight, keypoints_image, scores, batch_meta: dict) -> None:
        """heatmaps_pred, target: (N, K, h, w); target_weight: (N, K); keypoints_image: (N, K, 2)
        in image pixels; scores: (N, K) joint confidences; batch_meta: the batch's `image_id`,
        `annotation_id`, `bbox` (image coordinates) and optionally `box_score` (N,) (detections)."""
        weight = _numpy(target_weight).astype(np.float32)
        self.pck.update(_numpy(heatmaps_pred).astype(np.float32), _numpy(target).astype(np.float32) * (weight > 0)[..., None, None])

        keypoints_image, scores = np.asarray(keypoints_image, np.float64), np.asarray(scores, np.float64)
        image_ids = _numpy(batch_meta["image_id"]).astype(np.int64)
        boxes = _numpy(batch_meta["bbox"]).astype(np.float64).reshape(-1, 4)
        box_scores = _numpy(batch_meta["box_score"]) if "box_score" in batch_meta else np.ones(len(image_ids))
        for i in range(len(image_ids)):
            self.instances.append(
                {
                    "image_id": int(image_ids[i]),
                    "keypoints": np.concatenate([keypoints_image[i], scores[i][:, None]], axis=1),
                    "score": instance_score(float(box_scores[i]), scores[i], self.joint_threshold),
                    "area": float(boxes[i, 2] * boxes[i, 3]),
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
            ap = dict.fromkeys(("ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l"), float("nan"))
        else:
            image_ids = sorted({instance["image_id"] for instance in self.instances})
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
            {"id": int(row["image_id"]), "file_name": row["file_name"], "width": int(row["width"]), "height": int(row["height"])}
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
            crop_panel(images[i], np.concatenate([predicted_xy[i], confidence[i][:, None]], 1), height=panel_height,
                       visibility=False, min_confidence=min_confidence),
        ]
        titles = ["true", "true heatmaps", "predicted heatmaps", "predicted"] if i == 0 else None
        rows.append(side_by_side(panels, titles=titles, height=panel_height))
    return stacked(rows)


# --------------------------------------------------------------------------------------------
# The task as the training runner (`jobs/train.py`) drives it


def prepare_training_batch(recipe: KeypointRecipe, seed: int, batch: dict, epoch: int = 0) -> dict:
    """The CPU half of a training batch, safe on several threads or processes (the runner prepares
    batches ahead with it): crops decoded, augmented and warped to the input, heatmap targets, and
    the colour-jitter factors that `KeypointTask.device_inputs` applies."""
    prepared = KeypointBatchTransform(recipe, train=True, seed=seed, epoch=epoch)(batch)
    return {key: prepared[key] for key in ("image", "color", "target", "target_weight")}


class KeypointTask:
    """The top-down keypoint model on `person_crops`: train on `train`, validate on `val` with the
    seed's PCK and COCO AP (ground-truth boxes). Batches are transformed in the training worker,
    with randomness from (seed, epoch, annotation id), so runs and resumed runs see the same data."""

    name = "keypoints"
    table = "person_crops"
    train_splits = ("train",)
    val_split = "val"
    holdout_every = 0
    fixed_input_size = True  # every batch has one shape (cuDNN may tune for it)
    feed_ahead = True  # batches cost CPU time (decode, augment, heatmaps): prepared on feed processes on GPUs
    cpu_bf16 = True  # bf16 autocast and channels-last on CPUs with native bf16: twice as fast (pose.precision)

    def __init__(self, recipe: KeypointRecipe = KeypointRecipe(), ground_truth: dict | None = None, seed: int = 0, backbone_weights: bytes | None = None,
                 init_weights: tuple[str, bytes] | None = None):
        """`backbone_weights`: the bytes of an ImageNet torchvision ResNet state_dict file, loaded
        into the backbone of every new model (they cannot be downloaded here). `init_weights`:
        (name, bytes) of a published Simple Baselines file whose whole network starts training
        (`pose.checkpoints.keypoint_net_weights`); the recipe's network must be that one."""
        self.recipe, self.ground_truth, self.seed = recipe, ground_truth, seed
        self.backbone_weights, self.init_weights = backbone_weights, init_weights
        self.batch_size = recipe.batch_size
        self.eval_batch_size = 64
        self.codec = recipe.codec()

    def config(self) -> dict:
        return {"task": self.name, "recipe": self.recipe.to_dict(), "model": self.recipe.model_config().to_dict()}

    def build_model(self) -> torch.nn.Module:
        import io

        from pose.models.keypoints import build_keypoint_model, load_backbone_weights

        model = build_keypoint_model(self.recipe.model_config())
        if self.backbone_weights is not None:
            load_backbone_weights(model, io.BytesIO(self.backbone_weights))
        if self.init_weights is not None:
            from pose.checkpoints import keypoint_net_weights
            from pose.models.weights import check_fits

            name, data = self.init_weights
            state = keypoint_net_weights(data, name)
            check_fits(state, model.state_dict(), f"{name} for the recipe's {self.recipe.backbone} network",
                       optional=lambda key: key.endswith("num_batches_tracked"))
            model.load_state_dict(state, strict=False)
        return model

    def build_optimizer(self, model: torch.nn.Module, steps_per_epoch: int):
        optimizer = self.recipe.optimizer(model)
        return optimizer, self.recipe.scheduler(optimizer, steps_per_epoch)

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
        return {
            "image": _training_input(prepared, device, channels_last=device.type == "cuda"),
            "target": torch.as_tensor(prepared["target"]).to(device, non_blocking=True),
            "target_weight": torch.as_tensor(prepared["target_weight"]).to(device, non_blocking=True),
        }

    def loss(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        return keypoint_loss(model(inputs["image"]), inputs["target"], inputs["target_weight"])

    def evaluator(self) -> "KeypointTaskEvaluator":
        return KeypointTaskEvaluator(self)


class KeypointTaskEvaluator:
    """Rows of the validation split in, `KeypointEvaluator` figures out."""

    def __init__(self, task: KeypointTask):
        self.task = task
        self.transform = KeypointBatchTransform(task.recipe, train=False)
        self.figures = KeypointEvaluator(task.codec, task.ground_truth)

    def update(self, model: torch.nn.Module, batch: dict, device: torch.device) -> None:
        prepared = self.transform(batch)
        keypoints, scores, heatmaps = predict(model, prepared["image"], flip_test=self.task.recipe.flip_test, codec=self.task.codec)
        keypoints_image = to_image_coordinates(keypoints, prepared["image_from_input"])
        self.figures.update(heatmaps, prepared["target"], prepared["target_weight"], keypoints_image, scores, prepared)

    def result(self) -> dict:
        figures = self.figures.result()
        return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float, np.floating)) and k in ("pck", "ap", "ap50", "ap75", "ar")}


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
