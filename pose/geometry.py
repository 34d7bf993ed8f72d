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



# OpenCV's fixed-point constants for warpAffine + remap with INTER_LINEAR on 8-bit images.
_AB_BITS = 10  # source positions are first computed in 1/1024 pixel ...
_INTER_BITS = 5  # ... then truncated to 1/32 pixel, which selects one of 32 x 32 bilinear weight sets
_INTER_TAB_SIZE = 1 << _INTER_BITS
_REMAP_COEF_BITS = 15  # the four bilinear weights are integers summing to 2**15


def warp_affine_opencv(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp an (H, W, 3) uint8 image by the forward (2, 3) `matrix` (source -> output, pixel-centre
    coordinates) into an (out_h, out_w, 3) uint8 image with exactly the pixels of OpenCV 4.x's
    `cv2.warpAffine(image, matrix, output_size, flags=cv2.INTER_LINEAR)` (constant border 0).

    `output_size` is (out_w, out_h). This is the crop MMPose's `TopdownAffine` and the original
    Simple Baselines / HRNet code cut; `warp_image` (Pillow) differs from it by up to ~90 grey
    levels where the crop meets the image border. OpenCV's arithmetic, step by step:

    - the forward matrix is inverted in double precision with the explicit 2x2 formula; a singular
      matrix gives an all-zero inverse, so every output pixel is the source's (0, 0);
    - the source x of output pixel (x, y) is round(1024 (i01 y + i02)) + round(1024 i00 x) + 16 in
      1/1024 pixel (each term rounded half-to-even on its own, in 32-bit integers), then truncated
      to 1/32 pixel; likewise for y;
    - the 1/32 fractions (fx, fy) select the integer weights (32 - fx or fx) (32 - fy or fy) 32 of the
      four neighbours; their weighted sum is rounded with + 2**14 >> 15;
    - neighbours outside the image count as 0: the crop blends with black across the image border
      and is 0 where no neighbour is inside.

    Checked equal, pixel for pixel, to OpenCV 4.10 and 4.14 on thousands of random warps. OpenCV 5.x
    warps in floating point instead and differs from 4.x by a few grey levels.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"warp_affine_opencv wants an (H, W, 3) uint8 image, got shape {image.shape} of {image.dtype}")
    out_w, out_h = (int(v) for v in output_size)
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"output_size must be positive (w, h), got {output_size}")
    m = np.asarray(matrix, dtype=np.float64).reshape(6)
    # The output -> source map, computed as OpenCV does rather than with np.linalg.inv: a last-bit
    # difference can move a position across a 1/1024 rounding boundary.
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    i00, i01, i10, i11 = m[4] * det, -m[1] * det, -m[3] * det, m[0] * det
    i02 = -i00 * m[2] - i01 * m[5]
    i12 = -i10 * m[2] - i11 * m[5]

    # OpenCV splits each position into a per-row and a per-column term, rounded separately.
    # Multiplying by 1024 is exact, so where it happens does not matter. The arithmetic is
    # int32 as in OpenCV (it wraps the same way for absurd matrices).
    ab_scale = float(1 << _AB_BITS)
    xs = np.arange(out_w, dtype=np.float64)
    ys = np.arange(out_h, dtype=np.float64)
    half_step = np.int32((1 << _AB_BITS) // _INTER_TAB_SIZE // 2)
    x_of_row = _saturate_int32((i01 * ys + i02) * ab_scale) + half_step
    y_of_row = _saturate_int32((i11 * ys + i12) * ab_scale) + half_step
    src_x = np.add.outer(x_of_row, _saturate_int32(i00 * xs * ab_scale)) >> (_AB_BITS - _INTER_BITS)
    src_y = np.add.outer(y_of_row, _saturate_int32(i10 * xs * ab_scale)) >> (_AB_BITS - _INTER_BITS)
    frac_x = src_x & (_INTER_TAB_SIZE - 1)  # (out_h, out_w), in 1/32 pixel
    frac_y = src_y & (_INTER_TAB_SIZE - 1)
    col = np.clip(src_x >> _INTER_BITS, -32768, 32767)  # OpenCV keeps the pixel in a saturated int16
    row = np.clip(src_y >> _INTER_BITS, -32768, 32767)

    # OpenCV's weight for neighbour (row + dy, col + dx) is wy[dy] * wx[dx] * 32 (its table of
    # float products times 2**15 holds exactly these integers). A neighbour outside the image gets
    # weight 0. For fx = fy = 0 OpenCV stores 32767 for (0, 0) and gives the missing 1 to (1, 1):
    # (32767 a + b + 2**14) >> 15 == a for any 8-bit a, b, so the plain products give the same pixels.
    height, width = image.shape[:2]
    wx = (
        (_INTER_TAB_SIZE - frac_x) * ((col >= 0) & (col < width)),
        frac_x * ((col >= -1) & (col < width - 1)),
    )
    wy = (
        (_INTER_TAB_SIZE - frac_y) * ((row >= 0) & (row < height)),
        frac_y * ((row >= -1) & (row < height - 1)),
    )
    # Indices of the neighbours, clamped into the image (their weight is 0 where clamping changed them).
    cols = (np.clip(col, 0, width - 1).astype(np.intp), np.clip(col + 1, 0, width - 1).astype(np.intp))
    rows = (np.clip(row, 0, height - 1).astype(np.intp) * width, np.clip(row + 1, 0, height - 1).astype(np.intp) * width)

    pixels = image.reshape(height * width, 3)
    total = None
    for dy in (0, 1):
        # np.take gathers whole pixels several times faster than fancy indexing.
        left = np.take(pixels, rows[dy] + cols[0], axis=0)
        right = np.take(pixels, rows[dy] + cols[1], axis=0)
        line = left * wx[0][..., None] + right * wx[1][..., None]  # int32, at most 32 * 255
        line *= wy[dy][..., None]
        total = line if total is None else total + line
    total *= 1 << (_REMAP_COEF_BITS - 2 * _INTER_BITS)  # the weights' factor 32: sum of weights 2**15
    total += 1 << (_REMAP_COEF_BITS - 1)
    total >>= _REMAP_COEF_BITS
    return total.astype(np.uint8)  # weights are >= 0 and sum to at most 2**15, so 0 <= total <= 255


def _saturate_int32(values: np.ndarray) -> np.ndarray:
    """OpenCV's `saturate_cast<int>(double)`: round half to even, clamp to the int32 range."""
    return np.clip(np.rint(values), -(2**31), 2**31 - 1).astype(np.int32)
