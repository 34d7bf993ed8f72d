"""pose.geometry.warp_affine_opencv: the same pixels as OpenCV 4.x's warpAffine (INTER_LINEAR, border 0)."""

from pathlib import Path

import numpy as np
import pytest

from pose.geometry import crop_affine, warp_affine_opencv, warp_image

GOLDENS = sorted((Path(__file__).parent / "data" / "goldens").glob("*.npz"))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


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
