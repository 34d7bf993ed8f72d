"""pose.geometry.warp_affine_opencv: the same pixels as OpenCV 4.x's warpAffine (INTER_LINEAR, border 0)."""

from pathlib import Path

import numpy as np
import pytest

from pose.geometry import (
    _AB_BITS,
    _INTER_BITS,
    _INTER_TAB_SIZE,
    _REMAP_COEF_BITS,
    crop_affine,
    source_position_terms,
    warp_affine_opencv,
    warp_image,
)

# The goldens with warps: crops cut by the frameworks' own code (other golden files hold other outputs).
GOLDENS = [
    path
    for path in sorted((Path(__file__).parent / "data" / "goldens").glob("*.npz"))
    if "warps" in np.load(path).files
]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference_warp(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """OpenCV 4.x's warpAffine (INTER_LINEAR, border 0) as `warp_affine_opencv` first wrote it, step by
    step: int32 positions, per-neighbour masks for the image border, per-channel sums. Checked against
    OpenCV itself like the new one (the goldens); kept as the oracle for the fast version's gathers
    (the source positions are the library's `source_position_terms`, which the goldens check) and as
    the baseline of benchmarks/warp.py. `image` must be C-contiguous (H, W, 3) uint8.
    """
    out_w, out_h = (int(v) for v in output_size)
    x_of_row, x_of_col, y_of_row, y_of_col = source_position_terms(matrix, (out_w, out_h))
    src_x = np.add.outer(x_of_row, x_of_col) >> (_AB_BITS - _INTER_BITS)
    src_y = np.add.outer(y_of_row, y_of_col) >> (_AB_BITS - _INTER_BITS)
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
    rows = (
        np.clip(row, 0, height - 1).astype(np.intp) * width,
        np.clip(row + 1, 0, height - 1).astype(np.intp) * width,
    )

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


def test_there_are_goldens():
    assert len(GOLDENS) >= 9


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
def test_reproduces_the_goldens_crops_exactly(path):
    # The crops were cut by cv2.warpAffine (OpenCV 4.x) inside MMPose 1.3.2 and the original
    # Simple Baselines / HRNet code, from `image` with `warps`; several reach past the image border.
    golden = np.load(path)
    for matrix, crop in zip(golden["warps"], golden["crops"]):
        out = warp_affine_opencv(golden["image"], matrix, (crop.shape[1], crop.shape[0]))
        assert out.dtype == np.uint8 and out.shape == crop.shape
        np.testing.assert_array_equal(out, crop)


def test_goldens_differ_from_pillow_at_the_border():
    # Why the function exists: Pillow's bilinear warp cuts other pixels. If this ever fails, the
    # goldens no longer exercise the border and the test above proves less.
    golden = np.load(GOLDENS[0])
    matrix, crop = golden["warps"][0], golden["crops"][0]
    pillow = warp_image(golden["image"], matrix, (crop.shape[1], crop.shape[0]))
    assert np.abs(pillow.astype(int) - crop).max() > 10


def test_identity_returns_the_image():
    image = _image(37, 53)
    np.testing.assert_array_equal(warp_affine_opencv(image, np.eye(2, 3), (53, 37)), image)


@pytest.mark.parametrize("tx, ty", [(3, -2), (-7, 5), (0, 11)])
def test_integer_translation_shifts_pixels_and_fills_zeros(tx, ty):
    image = _image(30, 40, seed=1)
    out = warp_affine_opencv(image, np.array([[1.0, 0, tx], [0, 1.0, ty]]), (40, 30))
    expected = np.zeros_like(image)
    # Output pixel (x, y) is source pixel (x - tx, y - ty).
    ys, xs = np.mgrid[0:30, 0:40]
    inside = (xs - tx >= 0) & (xs - tx < 40) & (ys - ty >= 0) & (ys - ty < 30)
    expected[inside] = image[(ys - ty)[inside], (xs - tx)[inside]]
    np.testing.assert_array_equal(out, expected)


def test_half_pixel_translation_rounds_like_opencv():
    # Shifting by half a pixel averages neighbours: (a * 2**14 + b * 2**14 + 2**14) >> 15 rounds
    # half up, and a neighbour past the border counts as 0 (the last column is half dark).
    image = np.zeros((1, 4, 3), np.uint8)
    image[0, :, 0] = [10, 13, 200, 255]
    out = warp_affine_opencv(image, np.array([[1.0, 0, -0.5], [0, 1.0, 0]]), (4, 1))
    assert out[0, :, 0].tolist() == [12, 107, 228, 128]
    assert not out[..., 1:].any()


def test_sub_pixel_positions_are_quantised_to_one_32nd():
    # OpenCV quantises source positions to 1/32 pixel: a shift of 0.01 px is no shift at all,
    # a shift of 1/32 px moves 1/32 of the way to the next pixel.
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, :, :] = [[0, 0, 0], [255, 255, 255], [0, 0, 0]]
    still = warp_affine_opencv(image, np.array([[1.0, 0, -0.01], [0, 1.0, 0]]), (3, 1))
    np.testing.assert_array_equal(still, image)
    moved = warp_affine_opencv(image, np.array([[1.0, 0, -1 / 32], [0, 1.0, 0]]), (3, 1))
    assert moved[0, :, 0].tolist() == [8, 247, 0]  # 255/32 = 7.97 -> 8; 255 * 31/32 = 247.03 -> 247


def test_crop_fully_outside_the_image_is_black():
    image = np.full((50, 60, 3), 255, np.uint8)
    matrix = crop_affine(np.array([500.0, -300.0]), np.array([40.0, 53.3]), (48, 64), rotation_deg=30)
    out = warp_affine_opencv(image, matrix, (48, 64))
    assert out.shape == (64, 48, 3) and not out.any()


def test_crop_across_the_border_blends_with_black():
    # A white image cut with its right edge in the middle of the crop: white, one blended column, black.
    image = np.full((20, 20, 3), 255, np.uint8)
    out = warp_affine_opencv(image, np.array([[1.0, 0, -9.5], [0, 1.0, 0]]), (20, 20))
    assert (out[:, :10] == 255).all() and (out[:, 10] == 128).all() and not out[:, 11:].any()


def test_singular_matrix_samples_the_first_pixel_everywhere():
    # OpenCV replaces the inverse of a singular matrix by zeros: every output pixel reads (0, 0).
    image = _image(10, 12, seed=2)
    out = warp_affine_opencv(image, np.array([[1.0, 2.0, 5.0], [0.5, 1.0, 3.0]]), (7, 4))
    np.testing.assert_array_equal(out, np.broadcast_to(image[0, 0], (4, 7, 3)))


def test_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="uint8"):
        warp_affine_opencv(np.zeros((4, 4, 3), np.float32), np.eye(2, 3), (4, 4))
    with pytest.raises(ValueError, match="output_size"):
        warp_affine_opencv(np.zeros((4, 4, 3), np.uint8), np.eye(2, 3), (0, 4))


def _random_matrix(rng: np.random.Generator, kind: int, height: int, width: int) -> np.ndarray:
    """A forward (2, 3) matrix of one of the families the fast warp must get exactly right."""
    if kind == 0:  # rotation and scale about a random centre, anything from 1/20 to 20x: training crops
        angle, scale = rng.uniform(-np.pi, np.pi), np.exp(rng.uniform(-3, 3))
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        centre = rng.uniform(-0.5, 1.5, 2) * (width, height)
        about_centre = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
        return np.array([[c, -s, 20.0], [s, c, 20.0]]) @ about_centre
    if kind == 1:  # axis-aligned, flips included: evaluation crops and mirrors
        sx, sy = rng.choice([-1, 1], 2) * np.exp(rng.uniform(-2, 2, 2))
        return np.array([[sx, 0.0, rng.uniform(-80, 80)], [0.0, sy, rng.uniform(-80, 80)]])
    if kind == 2:  # sub-pixel shifts on the 1/32 grid and next to it
        return np.eye(2, 3) + np.hstack(
            [np.zeros((2, 2)), rng.integers(-96, 96, (2, 1)) / 32 + rng.choice([0, 1e-9, -1e-9])]
        )
    if kind == 3:  # any matrix, from tiny to huge entries
        return rng.normal(size=(2, 3)) * 10.0 ** rng.integers(-6, 7)
    if kind == 4:  # far outside the image, up to where OpenCV's int32 positions wrap around
        return np.array(
            [
                [1.0, rng.uniform(-0.3, 0.3), 10.0 ** rng.uniform(2, 8) * rng.choice([-1, 1])],
                [rng.uniform(-0.3, 0.3), 1.0, 10.0 ** rng.uniform(0, 8) * rng.choice([-1, 1])],
            ]
        )
    if kind == 5:  # singular and nearly singular: OpenCV's zero inverse, or huge positions
        a, b = rng.normal(size=2)
        return np.array([[a, b, rng.normal()], [2 * a, 2 * b + rng.choice([0.0, 1e-12]), rng.normal()]])
    return np.array(
        [
            [rng.choice([1e-7, 1e-3, 1e3, 1e7]), rng.normal(), 5.0],
            [rng.normal(), rng.choice([1e-7, 1e-3, 1e3, 1e7]), 3.0],
        ]
    )


def test_matches_the_reference_on_thousands_of_random_warps():
    rng = np.random.default_rng(2024)
    for trial in range(3000):
        height, width = (1, 1) if trial % 50 == 0 else rng.integers(1, 48, 2)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        size = (1, 1) if trial % 40 == 1 else tuple(int(v) for v in rng.integers(1, 40, 2))
        matrix = _random_matrix(rng, trial % 7, height, width)
        expected = reference_warp(image, matrix, size)
        np.testing.assert_array_equal(warp_affine_opencv(image, matrix, size), expected, err_msg=f"{matrix.tolist()}")


def test_views_are_read_in_place_with_the_same_pixels():
    # reference_sample warps the mirror image[:, ::-1] without copying it; any other view works too.
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for view in (image[:, ::-1], image[::-1], image[3:50:2, 70:5:-3], image.transpose(1, 0, 2)):
        for kind in range(7):
            matrix = _random_matrix(rng, kind, *view.shape[:2])
            expected = reference_warp(np.ascontiguousarray(view), matrix, (45, 37))
            np.testing.assert_array_equal(warp_affine_opencv(view, matrix, (45, 37)), expected)


def test_crop_shaped_warps_of_a_photo_sized_image():
    # The size the training feed cuts: 640x480 -> 192x256, rotated, zoomed, at and past the border.
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for center, scale, rotation in [
        ((320, 240), 200, 0),
        ((30, 450), 350, 35),
        ((600, 20), 90, -120),
        ((320, 240), 1500, 170),
    ]:
        matrix = crop_affine(
            np.array(center, float), np.array([scale * 0.75, scale]), (192, 256), rotation_deg=rotation
        )
        for source in (image, image[:, ::-1]):
            expected = reference_warp(np.ascontiguousarray(source), matrix, (192, 256))
            np.testing.assert_array_equal(warp_affine_opencv(source, matrix, (192, 256)), expected)


def test_pixels_beyond_opencvs_int16_coordinates():
    # OpenCV saturates pixel coordinates to int16: past column 32767 of a wider image it reads
    # columns 32767/32768 over and over. Rare, but exact too.
    image = np.random.default_rng(3).integers(0, 256, (2, 33000, 3), dtype=np.uint8)
    for tx in (-32700.0, -32760.3, -32900.0, 5.0):
        matrix = np.array([[1.0, 0, tx], [0, 1.0, 0]])
        np.testing.assert_array_equal(
            warp_affine_opencv(image, matrix, (300, 2)), reference_warp(image, matrix, (300, 2))
        )
