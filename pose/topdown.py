"""Top-down pose estimation with any model: person boxes -> crops -> model -> decoding -> image
coordinates -> rescoring -> OKS-NMS, in one place and without Ray.

Every family of keypoint model (the ones trained here, MMPose's SimpleBaseline / HRNet / RTMPose,
the original Simple Baselines and HRNet releases) implements `PoseModel`: how its framework cuts a
box (`CropConvention`), how it turns uint8 crops into the network's input, and how it decodes the
network's output (with the flip test) into keypoints in input pixels. `TopDownPredictor` runs the
chain; annotate's actors, `eval-keypoints`, the pictures and the benchmarks all call it.

Coordinates: `(x, y)` pixels, integer = pixel centre (`pose.geometry`). Matrices are (2, 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from pose.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine, warp_affine_opencv, warp_image
from pose.joints import NUM_JOINTS
from pose.metrics import oks_nms
from pose.precision import Precision

# Where the box centre lands in the model input, and how input pixels map back to the image:
# - "pose-jobs": at ((w - 1) / 2, (h - 1) / 2), the box width spanning the w pixels (pose.geometry);
#   keypoints map back by the inverse warp. Models trained here.
# - "mmpose": at (w / 2, h / 2), scale w / box width (MMPose's get_warp_matrix); keypoints map back
#   as kp / input_size * scale + centre - scale / 2 (MMPose's TopdownPoseEstimator).
# - "udp": MMPose's unbiased warp (get_udp_warp_matrix): at ((w - 1) / 2, (h - 1) / 2), scale
#   (w - 1) / box width; keypoints map back as in "mmpose" (UDP's decoder has already scaled them).
# - "release": the Simple Baselines and HRNet releases' get_affine_transform, the same map as
#   "mmpose" computed their way (float32 centre and scale in units of 200 pixels), and back through
#   the heatmap as their transform_preds does.
# The warps are computed as each framework computes them, float32 rounding included, so that the
# crops hold the same pixels.
Centring = Literal["pose-jobs", "mmpose", "udp", "release"]
HEATMAP_STRIDE = 4  # the releases' heatmaps, which their back map goes through


@dataclass(frozen=True)
class CropConvention:
    """How a framework cuts a person box into its model input."""

    input_size: tuple[int, int]  # (w, h)
    padding: float = 1.25  # the box, grown to the input's aspect ratio, is scaled by this
    centring: Centring = "mmpose"

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def center_scale(self, box_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A COCO box [x, y, w, h] -> centre (2,) and scale (2,) (w, h) in image pixels: the box
        grown to the input's aspect ratio, then padded (MMPose's bbox_xywh2cs and
        _fix_aspect_ratio, Simple Baselines' _xywh2cs)."""
        center, scale = box_to_center_size(box_xywh, self.aspect_ratio, self.padding)
        if self.centring == "release":  # _box2cs: float32 centre, float32 scale / 200 padded in float32
            center = center.astype(np.float32).astype(np.float64)
            scale = (
                (scale / self.padding / 200.0).astype(np.float32) * np.float32(self.padding) * np.float32(200.0)
            ).astype(np.float64)
        return center, scale

    def matrices(self, center: np.ndarray, scale: np.ndarray, rotation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(input_from_image, image_from_input), both (2, 3) float64: the warp that cuts the crop,
        and the map that takes decoded keypoints (input pixels) back to the image.

        `rotation` in degrees turns the box counter-clockwise on screen before it is cut (training
        augmentation), as each framework's warp applies it: MMPose's rotation is the float32
        angle its RandomBBoxTransform draws (get_warp_matrix takes sine and cosine in float32),
        the releases' a float64 angle. With a rotation, image_from_input is the warp's inverse
        (the frameworks never map rotated crops back); without, each framework's own back map.
        """
        w, h = self.input_size
        center, scale = np.asarray(center, np.float64), np.asarray(scale, np.float64)
        if self.centring == "pose-jobs":
            warp = crop_affine(center, scale, self.input_size, rotation)
            return warp, invert_affine(warp)
        if self.centring == "mmpose":
            warp = _mmpose_warp(center, scale, self.input_size, rotation)
        elif self.centring == "release":
            warp = _release_warp(center, scale, self.input_size, rotation=rotation)
        else:
            warp = _udp_warp(center, scale, self.input_size, rotation)
        if rotation != 0:
            return warp, invert_affine(warp)
        if self.centring == "release":
            heatmap = (w // HEATMAP_STRIDE, h // HEATMAP_STRIDE)
            image_from_heatmap = _release_warp(center, scale, heatmap, inverse=True)
            return warp, image_from_heatmap @ np.diag([heatmap[0] / w, heatmap[1] / h, 1.0])
        back = np.array([[scale[0] / w, 0.0, center[0] - scale[0] / 2], [0.0, scale[1] / h, center[1] - scale[1] / 2]])
        return warp, back


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) map taking three float32 points `src` to `dst`, solved in float64 (OpenCV's
    getAffineTransform up to the last bits: the unrotated warps keep this solver so that their
    matrices stay what they were; `_opencv_affine_from_points` is OpenCV's to the bit)."""
    a = np.zeros((6, 6))
    a[0::2, 0:2], a[0::2, 2], a[1::2, 3:5], a[1::2, 5] = src, 1.0, src, 1.0
    return np.linalg.solve(a, dst.astype(np.float64).reshape(-1)).reshape(2, 3)


def _opencv_affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) map taking three float32 points `src` to `dst` exactly as OpenCV's
    getAffineTransform solves it: its 6x6 system, Gaussian elimination with partial pivoting in
    float64, operation by operation (cv::hal::LUImpl), so the matrix matches to the last bit
    (np.linalg.solve differs there for about 7 rotated boxes in 10; checked on 20,000 against cv2)."""
    a = [[0.0] * 6 for _ in range(6)]
    b = [float(v) for v in np.asarray(dst, np.float32).reshape(-1)]
    for i, (x, y) in enumerate(np.asarray(src, np.float32).astype(np.float64)):
        a[2 * i][0:3], a[2 * i + 1][3:6] = [x, y, 1.0], [x, y, 1.0]
    for i in range(6):
        pivot = i
        for j in range(i + 1, 6):
            if abs(a[j][i]) > abs(a[pivot][i]):
                pivot = j
        a[i], a[pivot], b[i], b[pivot] = a[pivot], a[i], b[pivot], b[i]
        d = -1.0 / a[i][i]
        for j in range(i + 1, 6):
            alpha = a[j][i] * d
            for k in range(i + 1, 6):
                a[j][k] += alpha * a[i][k]
            b[j] += alpha * b[i]
    for i in range(5, -1, -1):
        s = b[i]
        for k in range(i + 1, 6):
            s -= a[i][k] * b[k]
        b[i] = s / a[i][i]
    return np.array(b).reshape(2, 3)


def _mmpose_warp(
    center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int], rotation: float = 0.0
) -> np.ndarray:
    """MMPose's get_warp_matrix: the box centre and the middle of its left edge (turned by the
    rotation), and the point at a right angle from them, as float32 points in both frames.

    The angle is float32 as RandomBBoxTransform draws it, so np.deg2rad, np.sin and np.cos run in
    float32 as in MMPose; the turned half width is then float64 (float32 sine and cosine times a
    float64 vector), rounded to float32 when stored in the point."""
    w, h = output_size
    angle = np.deg2rad(np.float32(rotation))
    sin, cos = np.float64(np.sin(angle)), np.float64(np.cos(angle))
    half_width = -0.5 * scale[0]
    src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + np.array([cos * half_width, sin * half_width])
    dst[0], dst[1] = (w * 0.5, h * 0.5), np.array([w * 0.5, h * 0.5]) + np.array([-0.5 * w, 0.0])
    for points in (src, dst):
        direction = points[0] - points[1]
        points[2] = points[1] + np.r_[-direction[1], direction[0]]
    return _opencv_affine_from_points(src, dst) if rotation != 0 else _affine_from_points(src, dst)


def _udp_warp(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int], rotation: float = 0.0) -> np.ndarray:
    """MMPose's get_udp_warp_matrix: output pixel (w - 1) / 2 is the box centre, (w - 1) / box
    width the scale, turned by the rotation; entries in float64 (math.sin/cos of the float32
    angle in radians), the matrix stored as float32 as MMPose stores it, to cut the same pixels."""
    w, h = output_size
    angle = float(np.deg2rad(np.float32(rotation)))
    sin, cos = math.sin(angle), math.cos(angle)
    sx, sy = (w - 1) / scale[0], (h - 1) / scale[1]
    # MMPose writes the centre as input_size = 2 * centre; the halves are exact. (+ 0.0 turns the
    # -0.0 of no rotation into the 0.0 this matrix always had: the same pixels, the same bits.)
    warp = np.array(
        [
            [cos * sx, -sin * sx + 0.0, sx * (-center[0] * cos + center[1] * sin + 0.5 * scale[0])],
            [sin * sy, cos * sy, sy * (-center[0] * sin - center[1] * cos + 0.5 * scale[1])],
        ]
    )
    return warp.astype(np.float32).astype(np.float64)


def _release_warp(
    center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int], inverse: bool = False, rotation: float = 0.0
) -> np.ndarray:
    """The releases' get_affine_transform: the box centre and the middle of its top edge (half
    the box *width* up, turned by the rotation as their get_dir turns it, in float64), float32
    points; `inverse` maps the output back."""
    w, h = output_size
    angle = np.pi * rotation / 180
    sin, cos = np.sin(angle), np.cos(angle)
    half_width = np.float32(scale[0]) * -0.5
    src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + np.array([0 * cos - half_width * sin, 0 * sin + half_width * cos])
    dst[0], dst[1] = (w * 0.5, h * 0.5), np.array([w * 0.5, h * 0.5]) + np.array([0, w * -0.5], np.float32)
    for points in (src, dst):
        direction = points[0] - points[1]
        points[2] = points[1] + np.array([-direction[1], direction[0]], np.float32)
    solve = _opencv_affine_from_points if rotation != 0 else _affine_from_points
    return solve(dst, src) if inverse else solve(src, dst)


class PoseModel(Protocol):
    """What a keypoint model family provides to `TopDownPredictor`.

    `network` is a torch module in eval mode. `inputs` turns uint8 crops (N, h, w, 3) RGB, already
    on the network's device, into its input (channel order, normalisation). `decode` takes the
    network's output on the crops and, with the flip test, its output on the mirrored crops (None
    without), and returns keypoints (N, K, 2) float64 in input pixels and joint confidences (N, K)
    float32 as the family's framework reports them.
    """

    name: str
    crop: CropConvention
    network: torch.nn.Module

    def inputs(self, crops: torch.Tensor) -> torch.Tensor: ...

    def decode(self, output, flipped_output) -> tuple[np.ndarray, np.ndarray]: ...


def cut_crops(
    image: np.ndarray, boxes_xywh: np.ndarray, crop: CropConvention
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model inputs of person boxes (P, 4) of one RGB image (H, W, 3) uint8: crops (P, h, w, 3)
    uint8 (bilinear, zeros outside the image), image_from_input (P, 2, 3) float64 and the areas
    (P,) of the padded, aspect-fixed boxes (what OKS-NMS uses).

    The frameworks' families are cut as OpenCV's warpAffine cuts them (their code calls it), to the
    pixel; models trained here as their training warps (Pillow)."""
    w, h = crop.input_size
    warp_pixels = warp_image if crop.centring == "pose-jobs" else warp_affine_opencv
    crops, backs, areas = [], [], []
    for box in np.asarray(boxes_xywh, np.float64).reshape(-1, 4):
        center, scale = crop.center_scale(box)
        warp, back = crop.matrices(center, scale)
        crops.append(warp_pixels(image, warp, crop.input_size))
        backs.append(back)
        areas.append(float(scale[0] * scale[1]))
    return (
        np.asarray(crops, np.uint8).reshape(-1, h, w, 3),
        np.asarray(backs, np.float64).reshape(-1, 2, 3),
        np.asarray(areas, np.float64),
    )


def instance_score(box_score: float, joint_scores: np.ndarray, joint_threshold: float = 0.2) -> float:
    """A person's score as Simple Baselines and MMPose rescore top-down results: the box score
    times the mean confidence of the joints (K,) above `joint_threshold` (0 when none is)."""
    joint_scores = np.asarray(joint_scores, np.float64)
    confident = joint_scores > joint_threshold
    return float(box_score) * (float(joint_scores[confident].mean()) if confident.any() else 0.0)


def rescore_and_suppress(
    keypoints: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    *,
    joint_threshold: float = 0.2,
    nms_threshold: float = 0.9,
) -> tuple[np.ndarray, np.ndarray]:
    """The persons of one image kept as the COCO protocol keeps them: keypoints (P, K, 3), box
    scores (P,), padded box areas (P,) -> (kept indices best first, the scores (P,) of all)."""
    scores = np.array([instance_score(b, k[:, 2], joint_threshold) for b, k in zip(box_scores, keypoints)], np.float64)
    instances = [{"keypoints": k, "score": s, "area": a} for k, s, a in zip(keypoints, scores, areas)]
    kept = oks_nms(instances, nms_threshold) if instances else []
    return np.asarray(sorted(kept, key=lambda i: -scores[i]), np.int64), scores


class TopDownPredictor:
    """A `PoseModel` on a device: `keypoints` of crops, `__call__` of boxes in an image."""

    def __init__(
        self,
        model: PoseModel,
        *,
        device: torch.device | str = "cpu",
        precision: Precision = Precision(),
        flip_test: bool = True,
        batch_size: int = 32,
    ):
        self.model, self.device = model, torch.device(device)
        self.precision, self.flip_test, self.batch_size = precision, flip_test, batch_size
        self.model.network.to(self.device).eval()
        self.precision.prepare(self.model.network)

    @property
    def crop(self) -> CropConvention:
        return self.model.crop

    @torch.no_grad()
    def keypoints(self, crops: np.ndarray, image_from_input: np.ndarray) -> np.ndarray:
        """Crops (P, h, w, 3) uint8 from `cut_crops` -> keypoints (P, K, 3) float32: x, y in image
        pixels and the joint's confidence."""
        out = np.zeros((len(crops), NUM_JOINTS, 3), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = torch.from_numpy(np.ascontiguousarray(crops[chunk])).to(self.device)
            inputs = self.model.inputs(pixels)
            if self.precision.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast(self.device):
                output = _float(self.model.network(inputs))
                flipped = _float(self.model.network(inputs.flip(-1))) if self.flip_test else None
            points, scores = self.model.decode(output, flipped)
            out[chunk, :, :2] = apply_affine_each(points, image_from_input[chunk])
            out[chunk, :, 2] = scores
        return out

    def __call__(self, image: np.ndarray, boxes_xywh: np.ndarray, box_scores: np.ndarray) -> dict:
        """The persons of one RGB image given its person boxes (P, 4) and their scores (P,):
        {"keypoints" (P, K, 3), "scores" (P,), "areas" (P,), "kept" (indices after OKS-NMS, best
        first)}."""
        crops, backs, areas = cut_crops(image, boxes_xywh, self.crop)
        keypoints = self.keypoints(crops, backs)
        kept, scores = rescore_and_suppress(keypoints, np.asarray(box_scores, np.float64), areas)
        return {"keypoints": keypoints, "scores": scores, "areas": areas, "kept": kept}


def apply_affine_each(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Points (N, K, 2), each sample through its own (2, 3) matrix (N, 2, 3) -> (N, K, 2) float64."""
    return np.stack([apply_affine(p, m) for p, m in zip(np.asarray(points, np.float64), matrices)]).reshape(
        np.shape(points)
    )


def _float(output):
    if isinstance(output, (tuple, list)):
        return type(output)(o.float() for o in output)
    return output.float()


IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)  # RGB; MMPose's data preprocessor, the releases' Normalize x 255
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


class NormalisedPoseModel:
    """A `PoseModel` whose network takes ImageNet-normalised pixels: RGB, or BGR for networks trained
    on OpenCV's channel order (the Simple Baselines release normalises its BGR pixels with the RGB
    mean and std, channel by channel, and so does this). `decoder.decode(output, flipped_output)`
    does the family's flip test and decoding."""

    def __init__(self, *, name: str, crop: CropConvention, network: torch.nn.Module, decoder, bgr: bool = False):
        self.name, self.crop, self.network, self.decoder, self.bgr = name, crop, network, decoder, bgr

    def inputs(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 (N, h, w, 3) RGB -> float32 (N, 3, h, w) normalised, in the network's channel order."""
        pixels = crops.permute(0, 3, 1, 2).float()
        if self.bgr:
            pixels = pixels.flip(1)
        mean = torch.tensor(IMAGENET_MEAN_255, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD_255, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def decode(self, output, flipped_output) -> tuple[np.ndarray, np.ndarray]:
        return self.decoder.decode(output, flipped_output)
