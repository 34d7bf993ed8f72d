"""The top-down training sample: a person crop and its keypoints, transformed together.

`topdown_sample` turns one `person_crops` row (crop pixels, box and keypoints in crop coordinates)
into the model input: the box grown to the input's aspect ratio and padded, warped to the input
size, with Simple Baselines' augmentation when given a random generator — half body, scale,
rotation, horizontal flip with the left/right joint swap, and colour-jitter factors. All geometric
steps are composed into one affine matrix and the pixels are warped once; the colours are jittered
later, on the training device (`jitter_colors`).

Coordinates follow `pose.geometry`: (x, y) pixels, top-left origin, integer = pixel centre.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pose.geometry import (
    apply_affine,
    box_to_center_size,
    compose_affine,
    crop_affine,
    reduction_affine,
    warp_affine_opencv,
    warp_image,
)
from pose.images import load_reduced
from pose.joints import LOWER_BODY, UPPER_BODY, flip_index
from pose.topdown import CropConvention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    input_size: tuple[int, int] = (192, 256)  # (w, h) of the model input
    padding: float = 1.25  # the person box, grown to the input's aspect ratio, is padded by this
    flip: bool = True  # horizontal flip with probability 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # half body only for persons with MORE than this many labelled joints
    scale: float = 0.35  # box size x (1 + clip(normal(0, scale), -scale, scale))
    rotation: float = 45.0  # degrees: clip(normal(0, rotation), -2 rotation, 2 rotation) ...
    rotation_prob: float = 0.6  # ... with this probability, else 0
    color_jitter: float = 0.2  # brightness, contrast, saturation factors uniform in [1 - c, 1 + c]

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]


def _half_body_joints(labelled: np.ndarray, upper_first: bool) -> list[int] | None:
    """The joints a half-body transform keeps, as Simple Baselines and HRNet choose them: the upper body's
    labelled joints when `upper_first` and there are more than 2, else the lower body's when there are more
    than 2, else the upper body's; None when that leaves fewer than 2. `labelled` (17,) bool."""
    upper = [j for j in UPPER_BODY if labelled[j]]
    lower = [j for j in LOWER_BODY if labelled[j]]
    if upper_first and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    return chosen if len(chosen) >= 2 else None


def half_body_box(
    keypoints: np.ndarray, rng: np.random.Generator, aspect_ratio: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Simple Baselines' half-body box around the upper or the lower body's labelled joints: their
    extent grown to `aspect_ratio` and scaled by 1.5, centred on their mean.

    Upper or lower is an even draw (Simple Baselines' `randn() < 0.5` favours the upper body 69:31);
    a half with fewer than 3 labelled joints gives way to the other. `keypoints` (17, 3) with v;
    returns (center, size), or None when fewer than 2 joints are left."""
    chosen = _half_body_joints(keypoints[:, 2] > 0, upper_first=rng.random() < 0.5)
    if chosen is None:
        return None
    points = keypoints[chosen, :2]
    top_left, bottom_right = points.min(axis=0), points.max(axis=0)
    _, size = box_to_center_size(np.array([*top_left, *(bottom_right - top_left)]), aspect_ratio, padding=1.5)
    return points.mean(axis=0), size


def topdown_sample(
    crop: np.ndarray | Image.Image,
    bbox: np.ndarray,
    keypoints: np.ndarray,
    rng: np.random.Generator | None = None,
    config: AugmentConfig = AugmentConfig(),
) -> dict[str, np.ndarray]:
    """One model input from a person crop.

    crop: (H, W, 3) uint8, or an `open_image` result not yet decoded (decoded here at the size the
    warp needs, `pose.images.load_reduced`); bbox: (4,) person box [x, y, w, h] in crop coordinates; keypoints: (17, 3)
    COCO (x, y, v) in crop coordinates (a flat (51,) Parquet row works too). `rng` None means evaluation: no
    augmentation.

    Returns a dict:
      image: (h, w, 3) uint8, the model input;
      keypoints: (17, 2) float32 in input pixel coordinates (0 for unlabelled joints);
      visible: (17,) float32, 1 where the joint is labelled (v > 0) and lands on an input pixel;
      input_from_crop: (2, 3) float64, the affine map from crop to input coordinates (a flip included);
      color: (3,) float32 colour-jitter factors for `jitter_colors` (ones without augmentation).
    A flip swaps left and right joints as Simple Baselines and torchvision do: in the mirrored
    image the person's left wrist looks like a right wrist, so the pixel that was the left wrist
    comes back as `keypoints[right_wrist]`, and joint j keeps meaning what it looks like.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    out_w, out_h = config.input_size
    center, size = box_to_center_size(np.asarray(bbox), config.aspect_ratio, config.padding)
    rotation, flip = 0.0, False

    if rng is not None:
        if (keypoints[:, 2] > 0).sum() > config.half_body_min_joints and rng.random() < config.half_body_prob:
            half = half_body_box(keypoints, rng, config.aspect_ratio)
            if half is not None:
                center, size = half
        size = size * (1.0 + np.clip(rng.normal(0.0, config.scale), -config.scale, config.scale))
        if rng.random() < config.rotation_prob:
            rotation = float(np.clip(rng.normal(0.0, config.rotation), -2 * config.rotation, 2 * config.rotation))
        flip = config.flip and rng.random() < 0.5

    if flip:
        # Mirror the crop (x -> W - 1 - x), then cut the mirrored box: one matrix for both.
        crop_w = crop.size[0] if isinstance(crop, Image.Image) else crop.shape[1]
        mirror = np.array([[-1.0, 0.0, crop_w - 1.0], [0.0, 1.0, 0.0]])
        center = apply_affine(center, mirror)
        input_from_crop = compose_affine(crop_affine(center, size, (out_w, out_h), rotation), mirror)
    else:
        input_from_crop = crop_affine(center, size, (out_w, out_h), rotation)

    if isinstance(crop, Image.Image):
        # Encoded: decoded at the smallest DCT scale the warp allows (`load_reduced`).
        pixels, reduction = load_reduced(crop, float(np.linalg.norm(input_from_crop[:, :2], 2)))
        image = warp_image(pixels, compose_affine(input_from_crop, reduction_affine(reduction)), (out_w, out_h))
    else:
        image = warp_image(crop, input_from_crop, (out_w, out_h))
    color = np.ones(3, np.float32)
    if rng is not None and config.color_jitter > 0:
        color = color_factors(rng, config.color_jitter)

    points = apply_affine(keypoints[:, :2], input_from_crop)
    labelled = keypoints[:, 2] > 0
    if flip:
        points, labelled = points[flip_index()], labelled[flip_index()]
    on_input = (
        (points[:, 0] >= -0.5) & (points[:, 0] < out_w - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] < out_h - 0.5)
    )
    points[~labelled] = 0.0
    return {
        "image": image,
        "keypoints": points.astype(np.float32),
        "visible": (labelled & on_input).astype(np.float32),
        "input_from_crop": input_from_crop,
        "color": color,
    }


def color_factors(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour-jitter factors (brightness, contrast, saturation), each uniform in
    [1 - strength, 1 + strength]: (3,) float32, for `jitter_colors`."""
    return rng.uniform(1.0 - strength, 1.0 + strength, size=3).astype(np.float32)


def jitter_colors(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of images (N, H, W, 3) with values in [0, 255] (uint8 or
    float, on any device), scaled by `factors` (N, 3) (`color_factors`) in that order: a new
    float32 tensor.

    Pillow's ImageEnhance blends, as torchvision's ColorJitter applies them: towards black, towards
    the mean grey level (ITU-R 601 luma), towards each pixel's grey; clamped to [0, 255] after each,
    but not rounded. Training batches are jittered on the training device: on a GPU it costs next
    to nothing, and takes work off the feed processes; on a CPU it costs about what Pillow does."""
    x = images.to(torch.float32, copy=True)
    factors = torch.as_tensor(factors, dtype=torch.float32, device=x.device).view(-1, 1, 1, 3)
    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device)
    x.mul_(factors[..., 0:1]).clamp_(0.0, 255.0)
    mean = (x @ luma).mean((1, 2)).view(-1, 1, 1, 1)
    x = torch.lerp(mean.expand_as(x), x, factors[..., 1:2].expand_as(x)).clamp_(0.0, 255.0)
    grey = (x @ luma).unsqueeze(-1)
    return torch.lerp(grey.expand_as(x), x, factors[..., 2:3].expand_as(x)).clamp_(0.0, 255.0)


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) in [0, 255], numpy or torch on any device → float32 (N, 3, H, W)
    normalised with the ImageNet mean and std.

    The result is a channels-last view (memory stays NHWC, no transpose copy), which
    `torch.channels_last` models consume directly and others accept like any NCHW tensor.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"normalize expects images (N, H, W, 3), got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.permute(0, 3, 1, 2).float() - mean) / std


# --- The references' own training augmentation ------------------------------------------------------
#
# Simple Baselines and HRNet (`lib/dataset/JointsDataset.py __getitem__`, `half_body_transform`) and
# MMPose 1.x's td-hm train_pipeline (RandomFlip, RandomHalfBody, RandomBBoxTransform, TopdownAffine),
# sampled with their distributions, in their order, with the float32 roundings that move the crop.
# Centre and scale are image pixels throughout; the releases keep their scale in units of 200 pixels
# as float32, which is why their pixel scale is float32(float32(s) * 200), the value their
# get_affine_transform computes. Their arithmetic follows NumPy 1.x (value-based casting: a float32
# array times a float64 scalar stays float32; float32 scalar times a Python float is float64), the
# NumPy of their time. The random streams differ from theirs (one numpy Generator here; `random`,
# `np.random` and scipy there): the distributions are the same, the draws are not.


@dataclass(frozen=True)
class ReleaseAugment:
    """The releases' DATASET options (yaml), read by JointsDataset.__getitem__."""

    scale_factor: float = 0.35  # SCALE_FACTOR: s x clip(N(1, sf), 1 - sf, 1 + sf)
    rotation_factor: float = 45.0  # ROT_FACTOR: clip(N(0, rf), -2 rf, 2 rf) degrees when random() <= 0.6
    flip: bool = True  # FLIP: when random() <= 0.5
    half_body_prob: float = 0.3  # PROB_HALF_BODY
    half_body_joints: int = 8  # NUM_JOINTS_HALF_BODY: half body only with MORE labelled joints than this

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Simple Baselines, experiments/coco/resnet{50,101,152}/{256x192,384x288}_d256x3_adam_lr1e-3.yaml: its
# JointsDataset has no half body at all.
SIMPLE_BASELINES_AUGMENT = ReleaseAugment(scale_factor=0.3, rotation_factor=40.0, flip=True, half_body_prob=0.0)
# HRNet, experiments/coco/hrnet/w{32,48}_{256x192,384x288}_adam_lr1e-3.yaml.
HRNET_AUGMENT = ReleaseAugment(
    scale_factor=0.35, rotation_factor=45.0, flip=True, half_body_prob=0.3, half_body_joints=8
)


@dataclass(frozen=True)
class MMPoseAugment:
    """MMPose 1.x's td-hm train_pipeline: RandomFlip, RandomHalfBody, RandomBBoxTransform with their
    defaults (mmpose/datasets/transforms/common_transforms.py, 1.3.2)."""

    flip_prob: float = 0.5  # RandomFlip(direction='horizontal')
    half_body_min_total: int = 9  # RandomHalfBody: at least this many visible joints ...
    half_body_min_upper: int = 2  # ... an upper half needs this many, a lower half this many
    half_body_min_lower: int = 3
    half_body_prob: float = 0.3
    half_body_upper_prob: float = 0.7  # upper_prioritized_prob
    half_body_padding: float = 1.5
    shift_factor: float = 0.16  # RandomBBoxTransform: centre + truncnorm(-1, 1) x 0.16 x box size ...
    shift_prob: float = 0.3  # ... with this probability
    scale_range: tuple[float, float] = (0.5, 1.5)  # box size x (mid + truncnorm x half width)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0  # truncnorm x 80 degrees ...
    rotate_prob: float = 0.6  # ... with this probability

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class AugmentParams:
    """One draw of a reference augmentation: what `reference_sample` cuts.

    center (2,) and scale (2,) (w, h) in image pixels, float64 holding the reference's float32
    values; with `flip` they are in the mirrored image (x -> W - 1 - x), as the references compute
    them. scale is what the warp receives (MMPose: aspect-fixed; releases: float32(s) x 200).
    rotation_deg turns the box counter-clockwise on screen."""

    center: np.ndarray
    scale: np.ndarray
    rotation_deg: float = 0.0
    flip: bool = False


def release_center_scale(
    box_xywh: np.ndarray, image_size: tuple[int, int], aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray] | None:
    """A COCO box [x, y, w, h] as the releases' COCODataset stores it for training: clipped to the
    image ("clean_bbox": x2 = min(W - 1, x1 + max(0, w - 1))), then `_box2cs` (float32 centre,
    aspect grown, float32 scale / 200 times 1.25). Returns (center, scale) in pixels, float64
    holding float32 values (scale = float32(s) x 200 in float32), or None for a box they drop.
    `image_size` is (W, H)."""
    x, y, w, h = (float(v) for v in box_xywh)
    width, height = image_size
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1)), min(height - 1.0, y1 + max(0.0, h - 1))
    if not (w * h > 0 and x2 >= x1 and y2 >= y1):  # their check is COCO's 'area' > 0; w h stands in for it
        return None
    w, h = x2 - x1, y2 - y1
    center = np.array([x1 + w * 0.5, y1 + h * 0.5], np.float32)
    if w > aspect_ratio * h:
        h = w * 1.0 / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / 200.0, h / 200.0], np.float32) * np.float32(padding)
    return center.astype(np.float64), (scale * np.float32(200.0)).astype(np.float64)


def mmpose_center_scale(
    box_xywh: np.ndarray, image_size: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """A COCO box as MMPose's BaseCocoStyleDataset and GetBBoxCenterScale give it to the training
    pipeline: corners clipped to [0, W - 1] x [0, H - 1], float32, centre and size x padding. NOT
    grown to the input's aspect ratio (TopdownAffine does that after the random transforms, which
    shift by this size). Returns float64 (center, scale) holding float32 values."""
    x, y, w, h = (float(v) for v in box_xywh)
    width, height = image_size
    x1, y1 = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x2, y2 = np.clip(x + w, 0, width - 1), np.clip(y + h, 0, height - 1)
    box = np.array([x1, y1, x2, y2], np.float32)
    center = (box[2:] + box[:2]) * np.float32(0.5)
    scale = (box[2:] - box[:2]) * np.float32(padding)
    return center.astype(np.float64), scale.astype(np.float64)


def _release_units(scale: np.ndarray) -> np.ndarray:
    """Pixels -> the releases' float32 scale s with float32(s) x 200 == scale (their unit of 200 px)."""
    scale = np.asarray(scale, np.float64)
    units = (scale / 200.0).astype(np.float32)
    if np.array_equal(units * np.float32(200.0), scale):
        return units
    for i in range(2):  # scale / 200 rounds to s but for the rare last bit: try the neighbours
        for candidate in (np.nextafter(units[i], np.float32(np.inf)), np.nextafter(units[i], np.float32(0))):
            if float(candidate * np.float32(200.0)) == scale[i]:
                units[i] = candidate
    return units


def _release_half_body(
    rng: np.random.Generator, keypoints: np.ndarray, labelled: np.ndarray, aspect_ratio: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet's half_body_transform: (centre float32, scale float32 in units of 200 px) or None.

    The upper body is chosen when randn() < 0.5 (probability 0.69) and it has more than 2 labelled
    joints, else the lower body if it has more than 2, else the upper; fewer than 2 gives None."""
    chosen = _half_body_joints(labelled, upper_first=rng.standard_normal() < 0.5)
    if chosen is None:
        return None
    points = keypoints[chosen, :2].astype(np.float32)
    center = points.mean(axis=0)
    size = points.max(axis=0) - points.min(axis=0)
    w, h = float(size[0]), float(size[1])  # float32 scalar x Python float is float64 under NumPy 1.x
    if w > aspect_ratio * h:
        h = w * 1.0 / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w * 1.0 / 200, h * 1.0 / 200], np.float32) * np.float32(1.5)


def sample_release(
    rng: np.random.Generator,
    keypoints: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    image_width: int,
    config: ReleaseAugment,
    aspect_ratio: float,
) -> AugmentParams:
    """One draw of the releases' training augmentation (JointsDataset.__getitem__, is_train).

    keypoints (17, 3) image pixels with v; center (2,) and scale (2,) (w, h) pixels as
    `release_center_scale` gives them (padded, aspect grown); aspect_ratio = input w / h. In their
    order: half body (more than `half_body_joints` labelled and rand() < prob), scale
    s x clip(N(1, sf), 1 - sf, 1 + sf) in float32, rotation clip(N(0, rf), +-2 rf) when
    random() <= 0.6 else 0, flip when random() <= 0.5 with the centre mirrored in float32
    (c = W - c - 1)."""
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 3)
    labelled = np.minimum(keypoints[:, 2], 1) > 0
    c = np.asarray(center, np.float64).astype(np.float32)
    s = _release_units(scale)
    if labelled.sum() > config.half_body_joints and rng.random() < config.half_body_prob:
        half = _release_half_body(rng, keypoints, labelled, aspect_ratio)
        if half is not None:
            c, s = half
    sf, rf = config.scale_factor, config.rotation_factor
    # float32 array x float64 scalar: NumPy 1.x casts the factor to float32 and multiplies in float32.
    s = s * np.float32(min(max(rng.standard_normal() * sf + 1, 1 - sf), 1 + sf))
    rotation = min(max(rng.standard_normal() * rf, -rf * 2), rf * 2) if rng.random() <= 0.6 else 0.0
    flip = bool(config.flip and rng.random() <= 0.5)
    if flip:
        c = np.array([image_width - float(c[0]) - 1, c[1]], np.float32)
    return AugmentParams(c.astype(np.float64), (s * np.float32(200.0)).astype(np.float64), rotation, flip)


def truncated_normal(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` draws of the standard normal truncated to [-1, 1] (scipy's truncnorm(-1, 1), which
    MMPose's RandomBBoxTransform uses), by rejection: (size,) float64."""
    out = np.empty(0)
    while out.size < size:
        draws = rng.standard_normal(2 * size + 8)
        out = np.concatenate([out, draws[np.abs(draws) <= 1.0]])
    return out[:size]


def sample_mmpose(
    rng: np.random.Generator,
    keypoints: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    image_width: int,
    config: MMPoseAugment,
    aspect_ratio: float,
) -> AugmentParams:
    """One draw of MMPose's td-hm train_pipeline, in its order and in float32 as it computes.

    keypoints (17, 3) image pixels with v; center (2,) and scale (2,) pixels as
    `mmpose_center_scale` gives them (padded, NOT aspect-fixed). RandomFlip (the centre and the
    joints mirrored, x -> W - 1 - x, joints swapped), RandomHalfBody (on the flipped joints: box of
    the chosen half's extent x 1.5, its joints' mean as centre), RandomBBoxTransform (centre +
    truncnorm x shift_factor x box size, size x truncnorm scale, rotation truncnorm x
    rotate_factor, each with its probability), then TopdownAffine's aspect fix of the scale."""
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 3)
    points = keypoints[:, :2].astype(np.float32)
    visible = np.minimum(1, keypoints[:, 2]).astype(np.float32)
    c = np.asarray(center, np.float64).astype(np.float32)
    s = np.asarray(scale, np.float64).astype(np.float32)

    flip = bool(rng.random() < config.flip_prob)
    if flip:
        c[0] = np.float32(image_width) - c[0] - np.float32(1)  # flip_bbox(format='center') in float32
        points, visible = points[flip_index()], visible[flip_index()]
        points[:, 0] = np.float32(image_width - 1) - points[:, 0]

    if visible.sum() >= config.half_body_min_total and rng.random() <= config.half_body_prob:
        upper = [j for j in UPPER_BODY if visible[j] > 0]
        lower = [j for j in LOWER_BODY if visible[j] > 0]
        prefer_upper = rng.random() < config.half_body_upper_prob
        if len(upper) < config.half_body_min_upper and len(lower) < config.half_body_min_lower:
            chosen = None
        elif len(lower) < config.half_body_min_lower:
            chosen = upper
        elif len(upper) < config.half_body_min_upper:
            chosen = lower
        else:
            chosen = upper if prefer_upper else lower
        if chosen is not None:
            selected = points[chosen]
            c = selected.mean(axis=0)
            s = (selected.max(axis=0) - selected.min(axis=0)) * np.float32(config.half_body_padding)

    v = truncated_normal(rng, 4).astype(np.float32)
    offset = v[:2] * np.float32(config.shift_factor) if rng.random() < config.shift_prob else np.zeros(2, np.float32)
    low, high = config.scale_range
    factor = (
        v[2] * np.float32((high - low) * 0.5) + np.float32((high + low) * 0.5)
        if rng.random() < config.scale_prob
        else np.float32(1)
    )
    rotation = v[3] * np.float32(config.rotate_factor) if rng.random() < config.rotate_prob else np.float32(0)
    c = c + offset * s
    s = s * factor

    ratio = np.float32(aspect_ratio)  # TopdownAffine._fix_aspect_ratio, float32 arrays x Python float
    s = (
        np.array([s[0], s[0] / ratio], np.float32)
        if s[0] > s[1] * ratio
        else np.array([s[1] * ratio, s[1]], np.float32)
    )
    return AugmentParams(c.astype(np.float64), s.astype(np.float64), float(rotation), flip)


def reference_sample(
    image: np.ndarray, keypoints: np.ndarray, params: AugmentParams, crop: CropConvention
) -> dict[str, np.ndarray]:
    """The model input of one augmented view, cut as the reference cuts it.

    image (H, W, 3) uint8, the original image; keypoints (17, 3) (x, y, v) in its pixels; params
    from `sample_release` / `sample_mmpose` (or fixed, for evaluation: flip False, rotation 0);
    crop the framework's `CropConvention` ("release", "mmpose", "udp"). With `flip` the image is
    mirrored and the joints flipped (x -> W - 1 - x) and swapped (`flip_index`), then the crop is
    cut from it through `crop.matrices(center, scale, rotation)[0]` with OpenCV's bilinear
    warpAffine (`warp_affine_opencv`, bit-exact, zeros outside).

    Returns a dict:
      image: (h, w, 3) uint8;
      keypoints: (17, 2) float32 in input pixels of the framework's convention (float64 through
        the float64 matrix for "release", float32 for MMPose's cv2.transform); 0 where unlabelled;
      visible: (17,) float32, 1 where the joint is labelled (v > 0), after the swap: whether it
        lands on the input is the target encoder's business;
      input_from_image: (2, 3) float64, ORIGINAL (unflipped) image -> input, the mirror included.
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 3)
    width = image.shape[1]
    float32_points = crop.centring in ("mmpose", "udp")  # MMPose keeps keypoints in float32
    points = keypoints[:, :2].astype(np.float32) if float32_points else keypoints[:, :2].copy()
    labelled = keypoints[:, 2] > 0
    source, mirror = image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if params.flip:
        source = image[:, ::-1]  # a view: warp_affine_opencv reads it in place (a copy costs about as much as the warp)
        points, labelled = points[flip_index()], labelled[flip_index()]
        # As each writes it: MMPose's flip_keypoints (w - 1) - x in float32, the releases' W - x - 1.
        points[:, 0] = (width - 1) - points[:, 0] if float32_points else width - points[:, 0] - 1
        mirror = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])
    warp = crop.matrices(params.center, params.scale, params.rotation_deg)[0]
    pixels = warp_affine_opencv(source, warp, crop.input_size)
    if float32_points:
        m = warp.astype(np.float32)
        moved = points @ m[:, :2].T + m[:, 2]
    else:
        moved = apply_affine(points, warp)
    moved = np.where(labelled[:, None], moved, 0.0).astype(np.float32)
    return {
        "image": pixels,
        "keypoints": moved,
        "visible": labelled.astype(np.float32),
        "input_from_image": compose_affine(warp, mirror),
    }


# --------------------------------------------------------------------------------------------
# RTMPose's pixel augmentation: after the warp, on the model-input crop


@dataclass(frozen=True)
class RTMPosePixelAugment:
    """The pixel steps of MMPose's RTMPose train pipelines after `TopdownAffine`: mmdet's `YOLOXHSVRandomAug` (its
    defaults), then `Albumentation` with albumentations' `Blur(p=0.1)`, `MedianBlur(p=0.1)` (both `blur_limit` 7:
    odd kernels 3-7) and `CoarseDropout(max_holes=1, min_holes=1, height and width 0.2-0.4 of the crop, fill 0,
    p=dropout_prob)`; stage 1 has `dropout_prob` 1, stage 2 0.5. Keypoints are untouched, also under a hole."""

    hue_delta: int = 5  # YOLOXHSVRandomAug: each of H (OpenCV's 0-180), S, V gains uniform in +-delta ...
    saturation_delta: int = 30
    value_delta: int = 30  # ... kept with probability 1/2 each, truncated to integers
    blur_prob: float = 0.1
    blur_kernels: tuple[int, ...] = (3, 5, 7)
    median_prob: float = 0.1
    median_kernels: tuple[int, ...] = (3, 5, 7)
    dropout_prob: float = 1.0
    dropout_size: tuple[float, float] = (
        0.2,
        0.4,
    )  # hole height (width) = int(crop height (width) x uniform(low, high))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class PixelOps:
    """One draw of `RTMPosePixelAugment`: the HSV gains (3,) int (hue, saturation, value), the box-blur and median
    kernel sizes (0: not applied) and the hole (x, y, w, h) in crop pixels (None: no hole)."""

    hsv_gains: tuple[int, int, int]
    blur: int = 0
    median: int = 0
    hole: tuple[int, int, int, int] | None = None


def sample_pixel_ops(rng: np.random.Generator, augment: RTMPosePixelAugment, size: tuple[int, int]) -> PixelOps:
    """Draws `augment`'s steps for a crop of `size` (w, h) as the references draw them: gains uniform(-1, 1) x delta
    times a coin each, truncated toward zero (`astype(int16)`); each albumentations step applied when
    uniform < p, a kernel uniform among the odd sizes; the hole's size int(side x uniform(low, high)) and its
    top-left corner uniform over the positions that keep it inside (both ends included, `random.randint`)."""
    deltas = np.array([augment.hue_delta, augment.saturation_delta, augment.value_delta], np.float64)
    gains = (rng.uniform(-1, 1, 3) * deltas * rng.integers(0, 2, 3)).astype(np.int16)
    blur = int(rng.choice(augment.blur_kernels)) if rng.random() < augment.blur_prob else 0
    median = int(rng.choice(augment.median_kernels)) if rng.random() < augment.median_prob else 0
    hole = None
    if rng.random() < augment.dropout_prob:
        w, h = size
        hole_h = int(h * rng.uniform(*augment.dropout_size))
        hole_w = int(w * rng.uniform(*augment.dropout_size))
        y, x = int(rng.integers(0, h - hole_h + 1)), int(rng.integers(0, w - hole_w + 1))
        hole = (x, y, hole_w, hole_h)
    return PixelOps(tuple(int(g) for g in gains), blur, median, hole)


def apply_pixel_ops(image: np.ndarray, ops: PixelOps) -> np.ndarray:
    """`image` (h, w, 3) uint8 RGB after `ops`, in the references' order: HSV shift, box blur, median blur, hole."""
    out = shift_hsv(image, ops.hsv_gains)
    if ops.blur:
        out = box_blur(out, ops.blur)
    if ops.median:
        out = median_blur(out, ops.median)
    if ops.hole is not None:
        x, y, w, h = ops.hole
        out[y : y + h, x : x + w] = 0
    return out


# OpenCV's 8-bit HSV tables (color_hsv.simd.hpp): fixed point with 12 fractional bits, rounded as cvRound does.
_HSV_SHIFT = 12
_SDIV = np.array([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], np.int64)
_HDIV = np.array([0] + [round((180 << _HSV_SHIFT) / (6.0 * i)) for i in range(1, 256)], np.int64)


def rgb_to_hsv_opencv(image: np.ndarray) -> np.ndarray:
    """OpenCV's `cvtColor(COLOR_RGB2HSV)` of (..., 3) uint8: H in 0-179 (degrees / 2), S and V 0-255, in its integer
    arithmetic (the tables above, ties to +inf by the added half). -> (..., 3) int64."""
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    s = (diff * _SDIV[v] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], -1)


def hsv_to_rgb_opencv(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's `cvtColor(COLOR_HSV2RGB)` of (..., 3) 8-bit HSV (H 0-179): h x float32(6/180), s and v x
    float32(1/255), the sector and its fraction f, then v, v (1 - s), v (1 - s f) and v (1 - s (1 - f)) in float32
    with 1 - s x as one fused multiply-add (OpenCV's SIMD path on AVX2/FMA CPUs), x 255 rounded half to even.
    The fused step is a float64 product and sum rounded once to float32 (exact product of two float32s).
    -> (..., 3) uint8."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.where(h >= 6, h - np.float32(6), h)
    sector = np.floor(h).astype(np.int64)
    f = (h - sector).astype(np.float32)
    one = np.float32(1)

    def one_minus_s_times(x: np.ndarray) -> np.ndarray:
        return (1.0 - s.astype(np.float64) * x.astype(np.float64)).astype(np.float32)

    tab = np.stack([v, v * (one - s), v * one_minus_s_times(f), v * one_minus_s_times(one - f)], -1)
    order = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])  # (r, g, b) per sector
    rgb = np.take_along_axis(tab, order[np.clip(sector, 0, 5)], -1)
    rgb = np.where((s == 0)[..., None], v[..., None], rgb)
    return np.clip(np.rint(rgb * np.float32(255)), 0, 255).astype(np.uint8)


def shift_hsv(image: np.ndarray, gains: tuple[int, int, int]) -> np.ndarray:
    """mmdet's YOLOXHSVRandomAug with drawn `gains`: to OpenCV's 8-bit HSV, hue + gain modulo 180, saturation and
    value + gain clipped to 0-255, back to RGB. (h, w, 3) uint8 -> a new array. Zero gains too go through the 8-bit
    HSV round trip, which moves some colours by a few levels, as the reference does."""
    hsv = rgb_to_hsv_opencv(image)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1:] = np.clip(hsv[..., 1:] + np.asarray(gains[1:]), 0, 255)
    return hsv_to_rgb_opencv(hsv)


def box_blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """OpenCV's `blur(image, (k, k))` of (h, w, c) uint8: the mean of the k x k window, the border mirrored without
    repeating the edge (BORDER_REFLECT_101), the integer sum x 1/k^2 rounded half to even."""
    r = kernel // 2
    padded = np.pad(image.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="reflect")
    sums = np.cumsum(np.cumsum(np.pad(padded, ((1, 0), (1, 0), (0, 0))), 0), 1)
    h, w = image.shape[:2]
    window = (
        sums[kernel : kernel + h, kernel : kernel + w]
        - sums[:h, kernel : kernel + w]
        - sums[kernel : kernel + h, :w]
        + sums[:h, :w]
    )
    return np.clip(np.rint(window * (1.0 / (kernel * kernel))), 0, 255).astype(np.uint8)


def median_blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """OpenCV's `medianBlur(image, k)` of (h, w, c) uint8: the median of the k x k window, the edge pixels repeated
    past the border (BORDER_REPLICATE)."""
    r = kernel // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(0, 1))  # (h, w, c, k, k)
    return np.median(windows.reshape(*windows.shape[:3], -1), axis=-1).astype(np.uint8)
