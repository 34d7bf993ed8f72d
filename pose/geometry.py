"""Top-down geometry: person boxes, the affine warp between image and crop, and its inverse.

Coordinate convention everywhere in pose-jobs: points are `(x, y)` in pixels, origin at the top-left
image corner, and integer coordinates are pixel *centres* (pixel column 7 is x == 7.0), as in
COCO keypoints and OpenCV's `warpAffine`. Affine matrices are (2, 3) float64 arrays `M` mapping a
source point `p` to `M @ [x, y, 1]`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def box_to_center_size(
    box_xywh: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
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


def crop_affine(
    center: np.ndarray, size: np.ndarray, output_size: tuple[int, int], rotation_deg: float = 0.0
) -> np.ndarray:
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


def warp_image(
    image: np.ndarray | Image.Image, matrix: np.ndarray, output_size: tuple[int, int], fill: int = 0
) -> np.ndarray:
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

# `warp_affine_opencv` packs a pixel into one int64: red in bits 0-17, green 24-41, blue 42-59. A
# sum of four 8-bit neighbours times bilinear weights that add up to 2**10, plus the rounding term,
# stays under 2**18 per channel, so one int64 multiply-add blends all three channels at once.
_GREEN_BIT, _BLUE_BIT = 24, 42  # green on a byte boundary, so packing and unpacking it is a byte copy
_ONE_PER_CHANNEL = 1 + (1 << _GREEN_BIT) + (1 << _BLUE_BIT)


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

    The image may be any view, e.g. the mirror `image[:, ::-1]`, which is read in place (copying it
    first costs about as much as the warp). The pixels the crop reaches are packed into an int64
    table with zeros around the image, one channel per bit field, so four gathers and ~15 in-place
    whole-array integer operations do the work, several times faster than per-channel arithmetic
    with border masks (benchmarks/warp.py times both; figures in docs/benchmarks.md).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"warp_affine_opencv wants an (H, W, 3) uint8 image, got shape {image.shape} of {image.dtype}")
    out_w, out_h = (int(v) for v in output_size)
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"output_size must be positive (w, h), got {output_size}")
    x_of_row, x_of_col, y_of_row, y_of_col = source_position_terms(matrix, (out_w, out_h))
    height, width = image.shape[:2]
    col, fx, first_col, table_w = _tap_positions(x_of_row, x_of_col, width)
    row, fy, first_row, table_h = _tap_positions(y_of_row, y_of_col, height)

    # The table holds source rows first_row .. first_row + table_h - 1 and columns likewise: every
    # neighbour any output pixel reads, zeros where that is outside the image.
    table = np.zeros((table_h, table_w), "<i8")
    top, bottom = max(first_row, 0), min(first_row + table_h, height)
    left, right = max(first_col, 0), min(first_col + table_w, width)
    if top < bottom and left < right:
        source = image[top:bottom, left:right]
        packed = table[top - first_row : bottom - first_row, left - first_col : right - first_col]
        np.left_shift(source[..., 2], _BLUE_BIT, out=packed, dtype=np.int64)
        packed_bytes = packed.view(np.uint8).reshape(packed.shape + (8,))
        packed_bytes[..., 0] = source[..., 0]
        packed_bytes[..., _GREEN_BIT // 8] = source[..., 1]

    # Flat table index of each output pixel's top-left neighbour, written over a full-size position
    # array when there is one (fresh memory costs about as much as the arithmetic here).
    shape = (out_h, out_w)
    row *= table_w
    index = row if row.shape == shape else col if col.shape == shape else np.empty(shape, np.intp)
    spare = col if col.shape == shape and col is not index else None
    np.add(row, col, out=index)

    # Bilinear blend of the four neighbours, all channels at once: 32 a + fx (b - a) per row, then
    # 32 upper + fy (lower - upper), i.e. the sum of the neighbours times (32 - fx or fx) (32 - fy or
    # fy). Differences may be negative in a channel's bit field and borrow from the next one, but
    # integer arithmetic is exact and each channel's final sum lies in [0, 2**18), so the fields
    # separate again. OpenCV's weights are these times 32 (with 32767 instead of 32768 at fx = fy = 0,
    # which rounds to the same pixel): (32 sum + 2**14) >> 15 == (sum + 2**9) >> 10.
    # mode="clip" never clips here (every index is inside the table); unlike the default it lets
    # np.take write into `out` directly.
    flat = table.reshape(-1)
    upper = np.take(flat, index, mode="clip", out=spare)
    step = np.take(flat[1:], index, mode="clip")
    step -= upper
    step *= fx
    upper <<= _INTER_BITS
    upper += step
    lower = np.take(flat[table_w:], index, mode="clip")
    np.take(flat[table_w + 1 :], index, mode="clip", out=step)
    step -= lower
    step *= fx
    lower <<= _INTER_BITS
    lower += step
    lower -= upper
    lower *= fy
    upper <<= _INTER_BITS
    upper += lower
    upper += (1 << (2 * _INTER_BITS - 1)) * _ONE_PER_CHANNEL
    upper >>= 2 * _INTER_BITS  # each channel's 8-bit result now starts its bit field

    out = np.empty((out_h, out_w, 3), np.uint8)
    result_bytes = upper.view(np.uint8).reshape(out_h, out_w, 8)
    out[..., 0] = result_bytes[..., 0]
    out[..., 1] = result_bytes[..., _GREEN_BIT // 8]
    upper >>= _BLUE_BIT % 8  # blue onto a byte boundary (a byte copy is cheaper than a shift-and-cast)
    out[..., 2] = result_bytes[..., _BLUE_BIT // 8]
    return out


def source_position_terms(
    matrix: np.ndarray, output_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where OpenCV 4.x's warpAffine reads each output pixel, in 1/1024 source pixel, as the four
    int32 terms it adds: x_of_row (out_h,) + x_of_col (out_w,) is the source x of output (row, col),
    likewise y; the row terms carry the half step that rounds to 1/32 pixel.

    `matrix` (2, 3) maps source to output, as cv2.warpAffine takes it; output_size is (w, h).
    """
    out_w, out_h = output_size
    m = np.asarray(matrix, dtype=np.float64).reshape(6)
    # The output -> source map, computed as OpenCV does rather than with np.linalg.inv: a last-bit
    # difference can move a position across a 1/1024 rounding boundary.
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    i00, i01, i10, i11 = m[4] * det, -m[1] * det, -m[3] * det, m[0] * det
    i02 = -i00 * m[2] - i01 * m[5]
    i12 = -i10 * m[2] - i11 * m[5]

    # OpenCV splits each position into a per-row and a per-column term, rounded separately.
    # Multiplying by 1024 is exact, so where it happens does not matter. The arithmetic is int32 as
    # in OpenCV (it wraps the same way for absurd matrices).
    ab_scale = float(1 << _AB_BITS)
    xs = np.arange(out_w, dtype=np.float64)
    ys = np.arange(out_h, dtype=np.float64)
    half_step = np.int32((1 << _AB_BITS) // _INTER_TAB_SIZE // 2)
    x_of_row = _saturate_int32((i01 * ys + i02) * ab_scale) + half_step
    y_of_row = _saturate_int32((i11 * ys + i12) * ab_scale) + half_step
    return x_of_row, _saturate_int32(i00 * xs * ab_scale), y_of_row, _saturate_int32(i10 * xs * ab_scale)


def _tap_positions(row_term: np.ndarray, col_term: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """OpenCV's neighbour positions along one image axis (x or y) for every output pixel.

    row_term (out_h,) and col_term (out_w,) are its int32 position terms in 1/1024 pixel, half step
    included; size is the image's extent along the axis. Returns
      pixel: int64 (out_h, out_w), or (out_h, 1) / (1, out_w) where one term is constant, the first
        neighbour's pixel minus `first`; the second neighbour is pixel + 1;
      fraction: the 1/32-pixel fraction (fx or fy), same shape, uint8 (int64 for a row or column);
      first, count: the span of pixels read, first .. first + count - 1 (a table of that extent
        with zeros outside the image holds every neighbour).
    Pixels further outside the image than the two zero pixels before and after it are moved onto
    those zeros (both their neighbours are 0 either way); OpenCV's int16 limit on pixel coordinates
    is applied the same way.
    """
    row_lo, row_hi = int(row_term.min()), int(row_term.max())
    col_lo, col_hi = int(col_term.min()), int(col_term.max())
    lo, hi = row_lo + col_lo, row_hi + col_hi
    wraps = lo < -(2**31) or hi >= 2**31  # OpenCV's int32 sums wrap around: any pixel can come out
    first, last = (-(2**40), 2**40) if wraps else (lo >> _AB_BITS, hi >> _AB_BITS)
    limit = min(size, 32767)  # OpenCV keeps the pixel in a saturated int16
    start, end = min(max(first, -2), limit), min(max(last, -2), limit)
    if wraps:
        position = np.add.outer(row_term, col_term).astype(np.int64)
        position -= start << _AB_BITS
    else:
        # Without wrap-around the int64 sums are OpenCV's; subtracting whole pixels (here the table's
        # first) leaves the fractions alone.
        rows, cols = row_term.astype(np.int64), col_term.astype(np.int64) - (start << _AB_BITS)
        if row_lo == row_hi:
            position = (cols + rows[0])[None, :]
        elif col_lo == col_hi:
            position = (rows + cols[0])[:, None]
        else:
            position = np.add.outer(rows, cols)
    # A full-size fraction array is kept in uint8: fresh int64 memory would cost more than the
    # mixed-type multiplies it saves; a row or column is cheap in int64.
    small = 1 in position.shape
    fraction = np.empty(position.shape, np.int64 if small else np.uint8)
    np.right_shift(position, _AB_BITS - _INTER_BITS, out=fraction, casting="unsafe")
    fraction &= _INTER_TAB_SIZE - 1
    position >>= _AB_BITS
    if first < start or last > end:
        np.clip(position, -2 - start, limit - start, out=position)
    return position, fraction, start, end - start + 2


def _saturate_int32(values: np.ndarray) -> np.ndarray:
    """OpenCV's `saturate_cast<int>(double)`: round half to even, clamp to the int32 range."""
    return np.clip(np.rint(values), -(2**31), 2**31 - 1).astype(np.int32)
