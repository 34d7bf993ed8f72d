"""The person detector task between image rows and the figures: the training recipe, the
augmentation of an image with its boxes, the loss and the evaluator (COCO box AP by pycocotools).

A training row is one image: `image` (encoded bytes), `boxes` (flat COCO `[x, y, w, h, ...]` of
its person annotations, in pixels of the image) and `iscrowd` (one flag per box). `jobs/` reads
the bytes and the boxes (`jobs.detector_rows`) and `jobs/train.py` drives the task; everything here
is numpy/torch and is called directly by the tests.

Coordinates: COCO boxes `[x, y, w, h]` in pixels, origin at the top-left corner of the top-left
pixel, so a box covers [x, x + w) x [y, y + h); torchvision's xyxy stays inside
`pose.models.detector`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from pose.images import decode_image
from pose.joints import PERSON_CATEGORY
from pose.metrics import coco_box_ap
from pose.models.detector import (
    DetectorConfig,
    backbone_stages,
    build_detector,
    detect,
    detection_results,
    detector_targets,
)

# Trained from scratch on a CPU: the mobilenet at a small input, trainable BatchNorm in every
# backbone stage (there are no weights to keep frozen).
SCRATCH_DETECTOR = DetectorConfig(
    arch="fasterrcnn_mobilenet_v3_large_fpn",
    num_classes=2,
    min_size=320,
    max_size=512,
    proposals_per_image=300,
    train_proposals_per_image=300,
    box_samples_per_image=64,
    trainable_backbone_layers=6,
    norm="batch",
)


@dataclass(frozen=True)
class DetectorRecipe:
    """How to train the 2-class (background, person) detector.

    The defaults are the CPU recipe from scratch (see the README for what it reaches). Fine-tuning
    from a COCO weight file keeps the file's frozen BatchNorm: `DetectorRecipe.fine_tune(arch)`.
    `batch_size` is the global batch (images per step over all workers: 2 workers take 2 each); the learning rate warms
    up linearly for `warmup_steps`, then follows a cosine to 0 at the end of `epochs`.
    """

    model: DetectorConfig = SCRATCH_DETECTOR
    epochs: int = 2
    batch_size: int = 4  # global
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    flip: float = 0.5  # probability of a horizontal flip
    scale_range: tuple[float, float] = (0.75, 1.33)  # zoom factors, drawn log-uniformly

    def __post_init__(self):
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        if self.model.num_classes != 2:
            raise ValueError(f"the person detector has 2 classes (background, person), got {self.model.num_classes}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")

    @classmethod
    def from_scratch(cls, arch: str = "fasterrcnn_mobilenet_v3_large_fpn", **fields) -> DetectorRecipe:
        """The default recipe for `arch`: every backbone stage trains, with trainable BatchNorm."""
        model = replace(SCRATCH_DETECTOR, arch=arch, trainable_backbone_layers=backbone_stages(arch))
        return cls(**{"model": model, **fields})

    @classmethod
    def fine_tune(cls, arch: str = "fasterrcnn_mobilenet_v3_large_fpn", **fields) -> DetectorRecipe:
        """The recipe to start from a COCO weight file: frozen BatchNorm and torchvision's 3
        trainable backbone stages, SGD at torchvision's fine-tuning rate."""
        model = replace(SCRATCH_DETECTOR, arch=arch, norm="frozen", trainable_backbone_layers=3)
        return cls(**{"model": model, "optimizer": "sgd", "lr": 0.01, "epochs": 4, **fields})

    def to_dict(self) -> dict:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["model"], values["scale_range"] = self.model.to_dict(), list(self.scale_range)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> DetectorRecipe:
        return cls(**{**values, "model": DetectorConfig.from_dict(values["model"])})

    def build_optimizer(self, model: torch.nn.Module, steps_per_epoch: int):
        """(optimizer, per-step LambdaLR scheduler) over the parameters that train; no weight decay
        on biases and normalisation."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if p.ndim > 1], "weight_decay": self.weight_decay},
            {"params": [p for _, p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]
        if self.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total = max(1, self.epochs * steps_per_epoch)
        warmup = min(self.warmup_steps, total // 2)

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
            progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return ramp * 0.5 * (1.0 + math.cos(math.pi * progress))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# Augmentation: (image, boxes) -> (image, boxes)


def horizontal_flip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, 3) image and its (N, 4) COCO boxes: x' = W - (x + w)."""
    flipped = boxes.copy()
    flipped[:, 0] = image.shape[1] - (boxes[:, 0] + boxes[:, 2])
    return np.ascontiguousarray(image[:, ::-1]), flipped


def zoom(image: np.ndarray, boxes: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scale jitter for a detector that resizes every input to a fixed short side itself.

    scale > 1 zooms in: a random window of 1/scale of the image's width and height is cut out,
    boxes clipped to it (what remains of a person is what shows, as COCO boxes the visible person).
    scale < 1 zooms out: the image is placed at a random spot of a canvas 1/scale as large, filled
    with its mean colour. Either way, once the detector resizes the result, objects are `scale`
    times their original size. Boxes left narrower or lower than 1 pixel are returned as they are;
    `detector_targets` drops them.
    """
    height, width = image.shape[:2]
    new_width, new_height = max(1, round(width / scale)), max(1, round(height / scale))
    boxes = boxes.copy()
    if scale >= 1:
        left, top = int(rng.integers(0, width - new_width + 1)), int(rng.integers(0, height - new_height + 1))
        image = image[top : top + new_height, left : left + new_width]
        x1 = np.clip(boxes[:, 0] - left, 0, new_width)
        y1 = np.clip(boxes[:, 1] - top, 0, new_height)
        x2 = np.clip(boxes[:, 0] + boxes[:, 2] - left, 0, new_width)
        y2 = np.clip(boxes[:, 1] + boxes[:, 3] - top, 0, new_height)
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        return np.ascontiguousarray(image), boxes
    left, top = int(rng.integers(0, new_width - width + 1)), int(rng.integers(0, new_height - height + 1))
    canvas = np.empty((new_height, new_width, 3), np.uint8)
    canvas[:] = image.reshape(-1, 3).mean(0).astype(np.uint8)
    canvas[top : top + height, left : left + width] = image
    boxes[:, 0] += left
    boxes[:, 1] += top
    return canvas, boxes


def augment(
    image: np.ndarray, boxes: np.ndarray, recipe: DetectorRecipe, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The training augmentation: a horizontal flip (p = recipe.flip), then a zoom by a factor
    drawn log-uniformly from recipe.scale_range."""
    if rng.random() < recipe.flip:
        image, boxes = horizontal_flip(image, boxes)
    low, high = recipe.scale_range
    scale = math.exp(rng.uniform(math.log(low), math.log(high))) if high > low else low
    if scale != 1.0:
        image, boxes = zoom(image, boxes, scale, rng)
    return image, boxes


def row_boxes(batch: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row i's (N, 4) float64 COCO boxes and (N,) bool crowd flags."""
    boxes = np.asarray(batch["boxes"][i], np.float64).reshape(-1, 4)
    iscrowd = np.asarray(batch["iscrowd"][i], bool).reshape(-1)
    return boxes, iscrowd


# --------------------------------------------------------------------------------------------
# The task as the training runner (`jobs/train.py`) drives it


def prepare_training_batch(recipe: DetectorRecipe, seed: int, batch: dict, epoch: int = 0) -> dict:
    """The CPU half of a training batch, safe on several threads or processes (the runner prepares
    batches ahead with it): images decoded and augmented, (C, H, W) uint8 tensors, and their targets."""
    images, targets = [], []
    for i, image_id in enumerate(np.asarray(batch["image_id"], np.int64)):
        rng = np.random.default_rng([seed, epoch, int(image_id)])
        boxes, iscrowd = row_boxes(batch, i)
        image, boxes = augment(decode_image(bytes(batch["image"][i]), exif_transpose=False), boxes, recipe, rng)
        # np.array: decoded images are read-only views of PIL's buffer
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        targets.append(detector_targets(boxes, np.ones(len(boxes), np.int64), iscrowd))
    return {"images": images, "targets": targets}


class DetectorTask:
    """The person detector on `images` rows (with `image` bytes, `boxes`, `iscrowd` added by
    `jobs.detector_rows`): train on `train`, validate on `val` with COCO box AP (crowds as
    COCO's ignore regions). Augmentation draws from (seed, epoch, image id), so a resumed run
    sees the same data. `init_weights`: the bytes of a 91-class COCO state_dict file of the same
    arch, the start of fine-tuning (`person_detector_from_coco`)."""

    name = "detector"
    table = "images"
    train_splits = ("train",)
    val_split = "val"
    holdout_every = 0
    eval_batch_size = 8
    feed_ahead = True  # batches cost CPU time (decode, augment): prepared on feed processes on GPUs

    def __init__(
        self,
        recipe: DetectorRecipe = DetectorRecipe(),
        ground_truth: dict | None = None,
        seed: int = 0,
        init_weights: bytes | None = None,
    ):
        self.recipe, self.ground_truth, self.seed = recipe, ground_truth, seed
        self.init_weights = init_weights
        self.batch_size = recipe.batch_size

    def config(self) -> dict:
        return {"task": self.name, "recipe": self.recipe.to_dict(), "model": self.recipe.model.to_dict()}

    def build_model(self) -> torch.nn.Module:
        if self.init_weights is None:
            return build_detector(self.recipe.model)
        import io

        from pose.models.detector import load_detector_weights, person_detector_from_coco

        coco = build_detector(replace(self.recipe.model, num_classes=91))
        load_detector_weights(coco, io.BytesIO(self.init_weights))
        return person_detector_from_coco(coco, self.recipe.model)

    def build_optimizer(self, model: torch.nn.Module, steps_per_epoch: int):
        return self.recipe.build_optimizer(model, steps_per_epoch)

    def prepare_batch(self, batch: dict, epoch: int = 0) -> dict:
        """The CPU half of a training batch (`prepare_training_batch`)."""
        return prepare_training_batch(self.recipe, self.seed, batch, epoch)

    def preparer(self):
        """`prepare_batch` without the task, for the feed processes: the task may hold a weight
        file's bytes (`init_weights`), which each process would otherwise receive."""
        return functools.partial(prepare_training_batch, self.recipe, self.seed)

    def device_inputs(self, prepared: dict, device: torch.device, generator: torch.Generator | None = None) -> dict:
        return {
            "images": [image.to(device, non_blocking=True).float().div_(255) for image in prepared["images"]],
            "targets": [{key: value.to(device) for key, value in target.items()} for target in prepared["targets"]],
        }

    def loss(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        losses = model(inputs["images"], inputs["targets"])
        return sum(losses.values())

    def evaluator(self) -> DetectorEvaluator:
        return DetectorEvaluator(self.ground_truth, headline=True)


class DetectorEvaluator:
    """Detections over a whole split in, COCO person box AP/AR out (pycocotools, iouType "bbox",
    over the images seen). Without ground truth the figures are NaN. `headline`: only AP, AP50,
    AP75 and AR (one line per epoch in training)."""

    def __init__(self, ground_truth: dict | None, headline: bool = False):
        self.ground_truth, self.headline = ground_truth, headline
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    @torch.no_grad()
    def update(self, model: torch.nn.Module, batch: dict, device: torch.device) -> list[dict]:
        """Detect persons in the batch's `image` bytes; returns the detections (see `detect`)."""
        image_ids = [int(v) for v in np.asarray(batch["image_id"], np.int64)]
        images = [decode_image(bytes(data), exif_transpose=False) for data in batch["image"]]
        found = detect(model, images, device)
        self.add(image_ids, found)
        return found

    def add(self, image_ids: list[int], detections: list[dict]) -> None:
        self.image_ids += image_ids
        self.results += detection_results(
            image_ids, detections, category_map={PERSON_CATEGORY["id"]: PERSON_CATEGORY["id"]}
        )

    def result(self) -> dict:
        """{"ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l", "ar1", "ar10", "ar", ..., "images", "detections"}."""
        if self.ground_truth is None:
            figures = dict.fromkeys(("ap", "ap50", "ap75", "ar"), float("nan"))
        else:
            figures = coco_box_ap(
                self.ground_truth, self.results, category_ids=[PERSON_CATEGORY["id"]], image_ids=self.image_ids
            )
        if self.headline:
            return {key: figures[key] for key in ("ap", "ap50", "ap75", "ar")}
        return {**figures, "images": len(self.image_ids), "detections": len(self.results)}
