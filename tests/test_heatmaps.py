import numpy as np
import pytest
import torch

from pose.geometry import apply_affine, crop_affine, invert_affine
from pose.heatmaps import HeatmapCodec, flip_heatmaps, flip_test, to_image_coordinates
from pose.joints import NUM_JOINTS, flip_index

codec = HeatmapCodec()  # input 192x256, heatmap 48x64, stride 4, sigma 2


def random_keypoints(rng, n, margin):
    """(n, 17, 2) real-valued input-pixel keypoints at least `margin` px inside the input."""
    w, h = codec.input_size
    return rng.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], (n, NUM_JOINTS, 2))


def heatmap_error(decoded, keypoints):
    return np.linalg.norm(decoded - keypoints, axis=-1) / 4  # in heatmap pixels


def test_peak_is_one_at_the_mapped_integer_pixel():
    # Input x = 4 i + 1.5 is the centre of heatmap pixel i.
    keypoints = np.array([[4 * 10 + 1.5, 4 * 20 + 1.5], [1.5, 1.5]])
    heatmaps, weights = codec.encode(keypoints, np.array([1, 1]))
    assert heatmaps.shape == (2, 64, 48) and heatmaps.dtype == np.float32
    assert heatmaps[0, 20, 10] == 1.0 and heatmaps[1, 0, 0] == 1.0
    assert heatmaps.max() == 1.0
    np.testing.assert_array_equal(weights, [1, 1])
    # Cut at 3 sigma = 6 px: nothing beyond, the Gaussian value at 6 px along one axis.
    assert heatmaps[0, 20, 17] == 0 and heatmaps[0, 27, 10] == 0
    assert heatmaps[0, 20, 16] == pytest.approx(np.exp(-36 / 8))


def test_invisible_and_outside_joints_get_zero_weight_and_map():
    keypoints = np.array([[50.0, 60.0], [50.0, 60.0], [-3.0, 60.0], [50.0, 256.0], [191.4, 255.4]])
    heatmaps, weights = codec.encode(keypoints, np.array([1, 0, 1, 1, 1]))
    np.testing.assert_array_equal(weights, [1, 0, 0, 0, 1])
    assert heatmaps[[1, 2, 3]].max() == 0 and heatmaps[[0, 4]].min(axis=(1, 2)).max() == 0
    assert heatmaps[4].max() > 0.9  # the image's last pixel is inside


def test_encode_takes_a_batch():
    keypoints = random_keypoints(np.random.default_rng(1), 3, 0)
    visible = np.ones((3, NUM_JOINTS))
    heatmaps, weights = codec.encode(keypoints, visible)
    assert heatmaps.shape == (3, NUM_JOINTS, 64, 48) and weights.shape == (3, NUM_JOINTS)
    np.testing.assert_array_equal(heatmaps[2], codec.encode(keypoints[2], visible[2])[0])


def test_dark_round_trip_is_sub_pixel():
    rng = np.random.default_rng(0)
    keypoints = random_keypoints(rng, 20, margin=8)  # at least 2 heatmap px from the border
    decoded, scores = codec.decode(codec.encode(keypoints, np.ones(keypoints.shape[:2]))[0])
    error = heatmap_error(decoded, keypoints)
    # Measured: mean 0.019, max 0.38 heatmap px; the error comes from the zero-padded smoothing
    # near the border: 4+ heatmap px inside it is < 0.01 px (mean 0.0004).
    assert error.mean() < 0.05 and error.max() < 0.5
    inner = random_keypoints(rng, 20, margin=18)
    inner_error = heatmap_error(codec.decode(codec.encode(inner, np.ones(inner.shape[:2]))[0])[0], inner)
    assert inner_error.max() < 0.01
    assert scores.shape == (20, NUM_JOINTS) and (scores > 0.9).all()


def test_quarter_pixel_round_trip_and_torch_input():
    quarter = HeatmapCodec(refinement="quarter")
    keypoints = random_keypoints(np.random.default_rng(2), 20, margin=8)
    heatmaps = torch.from_numpy(quarter.encode(keypoints, np.ones(keypoints.shape[:2]))[0])
    error = heatmap_error(quarter.decode(heatmaps)[0], keypoints)
    assert error.mean() < 0.3  # measured 0.19: half the error of the plain argmax


def test_decode_keeps_the_argmax_on_the_border():
    heatmaps = np.zeros((1, 2, 64, 48), np.float32)
    heatmaps[0, 0, 0, 5] = 1.0
    heatmaps[0, 1, 10, 47] = 1.0
    keypoints, scores = codec.decode(heatmaps)
    np.testing.assert_allclose(keypoints[0], [[4 * 5 + 1.5, 1.5], [4 * 47 + 1.5, 4 * 10 + 1.5]])
    np.testing.assert_array_equal(scores, [[1, 1]])


def test_flip_heatmaps_twice_is_identity():
    heatmaps = torch.rand(2, NUM_JOINTS, 64, 48)
    torch.testing.assert_close(flip_heatmaps(flip_heatmaps(heatmaps)), heatmaps)
    shifted = flip_heatmaps(heatmaps, shift=True)
    torch.testing.assert_close(shifted[..., 1:], flip_heatmaps(heatmaps)[..., :-1])


def test_flip_test_recovers_the_target_of_a_mirrored_input():
    # A model that outputs exactly the target: its output on the mirrored input, flipped back,
    # is the output on the input, because mirroring the input mirrors the heatmap exactly.
    keypoints = random_keypoints(np.random.default_rng(3), 2, margin=0)
    visible = np.ones((2, NUM_JOINTS))
    mirrored = keypoints[:, flip_index()].copy()
    mirrored[..., 0] = codec.input_size[0] - 1 - mirrored[..., 0]
    output = torch.from_numpy(codec.encode(keypoints, visible)[0])
    output_on_mirrored = torch.from_numpy(codec.encode(mirrored, visible)[0])
    torch.testing.assert_close(flip_test(output, output_on_mirrored), output, atol=1e-6, rtol=0)
    # Simple Baselines' one-pixel shift would move the flipped half 4 input px right.
    shifted = codec.decode(flip_heatmaps(output_on_mirrored, shift=True))[0]
    interior = ((keypoints > 20) & (keypoints < np.array(codec.input_size) - 21)).all(-1)
    assert interior.sum() > 5
    np.testing.assert_allclose((shifted - keypoints)[interior], [[4.0, 0.0]] * interior.sum(), atol=0.05)


def test_to_image_coordinates_inverts_the_crop():
    rng = np.random.default_rng(4)
    image_points = rng.uniform(0, 400, (2, NUM_JOINTS, 2))
    crops = [crop_affine(np.array([200.0, 150.0]), np.array([120.0, 160.0]), codec.input_size, r) for r in (0.0, 30.0)]
    input_points = np.stack([apply_affine(p, m) for p, m in zip(image_points, crops)])
    back = to_image_coordinates(input_points, np.stack([invert_affine(m) for m in crops]))
    np.testing.assert_allclose(back, image_points, atol=1e-9)


@pytest.mark.parametrize("sigma, size", [(2.0, (64, 48)), (1.0, (32, 24)), (1.5, (17, 13))])
def test_dark_smooths_only_the_argmax_neighbourhood_as_the_whole_map_would(sigma, size):
    from scipy.ndimage import gaussian_filter

    from pose.heatmaps import _smoothed_neighbourhood

    rng = np.random.default_rng(0)
    h, w = size
    maps = rng.random((3, 17, h, w)).astype(np.float32)
    x, y = np.clip(rng.integers(0, w, (3, 17)), 1, w - 2), np.clip(rng.integers(0, h, (3, 17)), 1, h - 2)
    x[0, 0], y[0, 0], x[0, 1], y[0, 1] = 1, 1, w - 2, h - 2  # next to the border, where zeros come in
    whole = gaussian_filter(maps.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="constant", truncate=3.0)
    n, k = np.arange(3)[:, None], np.arange(17)[None, :]
    expected = np.stack([np.stack([whole[n, k, y + dy, x + dx] for dx in (-1, 0, 1)], -1) for dy in (-1, 0, 1)], -2)
    np.testing.assert_allclose(_smoothed_neighbourhood(maps, x, y, sigma), expected, rtol=0, atol=1e-12)
