import numpy as np
import pytest

from pose.geometry import apply_affine, box_to_center_size, compose_affine, crop_affine, invert_affine, warp_image


def test_box_grows_to_aspect_ratio_without_stretching():
    center, size = box_to_center_size(np.array([10, 20, 30, 100]), aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [25, 70])
    np.testing.assert_allclose(size, [75 * 1.25, 100 * 1.25])  # width grown to 0.75 * height
    center, size = box_to_center_size(np.array([0, 0, 120, 40]), aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(size, [120, 160])  # height grown, width kept


def test_crop_affine_maps_region_onto_output_and_inverts():
    matrix = crop_affine(np.array([100.0, 50.0]), np.array([60.0, 80.0]), (192, 256), rotation_deg=30)
    np.testing.assert_allclose(apply_affine([100.0, 50.0], matrix), [95.5, 127.5])
    points = np.random.default_rng(0).uniform(0, 300, (10, 2))
    back = apply_affine(apply_affine(points, matrix), invert_affine(matrix))
    np.testing.assert_allclose(back, points, atol=1e-9)
    np.testing.assert_allclose(compose_affine(invert_affine(matrix), matrix), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_rotation_is_counter_clockwise_on_screen():
    matrix = crop_affine(np.array([0.0, 0.0]), np.array([10.0, 10.0]), (11, 11), rotation_deg=90)
    # A point to the right of the centre moves up on screen (smaller y) under a CCW rotation.
    x, y = apply_affine([1.0, 0.0], matrix)
    assert x == pytest.approx(5.0) and y < 5.0


@pytest.mark.parametrize("rotation", [0.0, 90.0])
def test_warp_puts_a_pixel_where_the_matrix_says(rotation):
    image = np.zeros((40, 50, 3), np.uint8)
    image[12, 31] = 255  # pixel at x=31, y=12
    matrix = crop_affine(np.array([25.0, 20.0]), np.array([25.0, 20.0]), (50, 40), rotation_deg=rotation)
    warped = warp_image(image, matrix, (50, 40))
    expected = apply_affine([31.0, 12.0], matrix)
    brightest = np.unravel_index(np.argmax(warped[..., 0]), warped.shape[:2])
    assert abs(brightest[1] - expected[0]) <= 1 and abs(brightest[0] - expected[1]) <= 1


def test_warp_fills_outside_with_fill_value():
    image = np.full((10, 10, 3), 200, np.uint8)
    matrix = crop_affine(np.array([0.0, 0.0]), np.array([10.0, 10.0]), (10, 10))
    warped = warp_image(image, matrix, (10, 10), fill=0)
    assert warped[0, 0].max() == 0 and warped[9, 9].min() == 200
