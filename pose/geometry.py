"""Top-down geometry: person boxes, the affine warp between image and crop, and its inverse.

Coordinate convention everywhere in pose-jobs: points are `(x, y)` in pixels, origin at the top-left
image corner, and integer coordinates are pixel *centres* (pixel column 7 is x == 7.0), as in
COCO keypoints and OpenCV's `warpAffine`. Affine matrices are (2, 3) float64 arrays `M` mapping a
source point `p` to `M @ [x, y, 1]`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def box_to_center_size(box_xywh: np.ndarray, aspect_ratio: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Grow a COCO box `[x, y, w, h]` to the given width/height ratio, then scale it by `padding`.

    The shorter side is extended (never shrunk) so the person keeps its proportions instead of
    being stretched, as Simple Baselines does. Returns `center` (2,) and `size` (2,) as (w, h).
    """
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + w * 0.5, y + h * 0.5])
    w, h = max(w, 1.0), max(h, 1.0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h]) * padding


def crop_affine(center: np.ndarray, size: np.ndarray, output_size: tuple[int, int], rotation_deg: float = 0.0) -> np.ndarray:
    """The (2, 3) matrix that maps the region `size` (w, h) around `center`, rotated by
    `rotation_deg` (counter-clockwise on screen), onto an output image of `output_size` (w, h).

    The region's centre lands on the output's centre; the region's width spans the output width.
    """
    out_w, out_h = output_size
    scale = out_w / float(size[0])
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    # Rotate and scale about `center`, then move `center` to the middle of the output. With y
    # pointing down, this matrix turns content counter-clockwise as seen on screen.
    linear = np.array([[cos, sin], [-sin, cos]])
    out_center = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5])
    translation = out_center - linear @ np.asarray(center, dtype=np.float64)
    return np.hstack([linear, translation[:, None]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix, as a (2, 3) matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) matrix of `outer ∘ inner`: first `inner`, then `outer`."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map points (..., 2) through a (2, 3) matrix; returns (..., 2) float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def reduction_affine(reduction: int) -> np.ndarray:
    """The affine map from an image decoded at 1/`reduction` of its size (its pixel x_r averages
    source pixels [r x_r, r x_r + r)) to the full image: x = r (x_r + 0.5) - 0.5."""
    r = float(reduction)
    return np.array([[r, 0.0, (r - 1.0) / 2.0], [0.0, r, (r - 1.0) / 2.0]])


def warp_image(image: np.ndarray | Image.Image, matrix: np.ndarray, output_size: tuple[int, int], fill: int = 0) -> np.ndarray:
    """Warp an (H, W, 3) uint8 image (or an RGB Pillow image) by `matrix` into an
    (out_h, out_w, 3) image, bilinear.

    Pixels that come from outside the source image are `fill`.
    """
    # Pillow samples in continuous coordinates (pixel centres at i + 0.5) and wants the inverse
    # map from output to input; convert our pixel-centre matrix accordingly.
    to_continuous = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    from_continuous = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5]])
    forward = compose_affine(to_continuous, compose_affine(matrix, from_continuous))
    inverse = invert_affine(forward)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    warped = pil.transform(
        tuple(int(v) for v in output_size),
        Image.Transform.AFFINE,
        tuple(inverse.reshape(-1)),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(fill,) * len(pil.getbands()),
    )
    return np.asarray(warped)
