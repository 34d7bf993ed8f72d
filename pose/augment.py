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

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pose.geometry import apply_affine, box_to_center_size, compose_affine, crop_affine, reduction_affine, warp_image
from pose.images import load_reduced
from pose.joints import LOWER_BODY, UPPER_BODY, flip_index

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


def half_body_box(keypoints: np.ndarray, rng: np.random.Generator, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Simple Baselines' half-body box around the upper or the lower body's labelled joints: their
    extent grown to `aspect_ratio` and scaled by 1.5, centred on their mean.

    Upper or lower is an even draw (Simple Baselines' `randn() < 0.5` favours the upper body 69:31);
    a half with fewer than 3 labelled joints gives way to the other. `keypoints` (17, 3) with v;
    returns (center, size), or None when fewer than 2 joints are left."""
    labelled = keypoints[:, 2] > 0
    upper = [j for j in UPPER_BODY if labelled[j]]
    lower = [j for j in LOWER_BODY if labelled[j]]
    if rng.random() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
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
    warp needs, `pose.images.load_reduced`); bbox: (4,) person box [x, y, w, h] in crop coordinates; keypoints:
    (17, 3) COCO (x, y, v) in crop coordinates (a flat (51,) Parquet row works too). `rng` None means evaluation: no augmentation.

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
    on_input = (points[:, 0] >= -0.5) & (points[:, 0] < out_w - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] < out_h - 0.5)
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
    to nothing, where Pillow on the feed processes took about 1.3 ms per crop at 256x192; on a CPU
    0.2-0.3 ms per crop at 128x96 on one thread, about what Pillow took."""
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
