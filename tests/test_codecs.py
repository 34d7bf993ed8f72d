"""pose.codecs: each framework's decoding formula pinned on small hand-made and random maps.

(The bit-for-bit comparison against MMPose, OpenCV and the original repositories needs those packages and is a
scratch script, not a test: see the module docstring.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pose.codecs import (
    MSRAHeatmapDecoder,
    SimCCDecoder,
    SimpleBaselinesDecoder,
    UDPHeatmapDecoder,
    heatmap_maximum,
    opencv_gaussian_blur,
    opencv_gaussian_kernel,
)
from pose.joints import FLIP_PAIRS, NUM_JOINTS, flip_index

H, W = 64, 48  # heatmaps of a 256x192 input


def gaussian(cx: float, cy: float, sigma: float = 2.0, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def maps_with(points: dict[int, np.ndarray], n: int = 1, fill: float = 0.0) -> torch.Tensor:
    """(n, 17, H, W) float32: joint j's map is points[j] (the same for every crop), `fill` elsewhere."""
    maps = np.full((n, NUM_JOINTS, H, W), fill, np.float32)
    for joint, m in points.items():
        maps[:, joint] = m
    return torch.from_numpy(maps)


def peak(x: int, y: int, left: float = 0.5, right: float = 0.5, up: float = 0.5, down: float = 0.5) -> np.ndarray:
    """A map with 1 at (x, y) and the given values at its four neighbours (where inside)."""
    m = np.zeros((H, W), np.float32)
    for (px, py), v in {(x - 1, y): left, (x + 1, y): right, (x, y - 1): up, (x, y + 1): down}.items():
        if 0 <= px < W and 0 <= py < H:
            m[py, px] = v
    m[y, x] = 1.0
    return m


def mirrored(maps: torch.Tensor) -> torch.Tensor:
    """What a network would output on the mirrored crop: each map mirrored along x, left/right joints swapped."""
    return maps.flip(-1)[:, torch.as_tensor(flip_index())]


# --- OpenCV's Gaussian kernel and MMPose's blur ---------------------------------------------------------------

@pytest.mark.parametrize("size, sigma", [(11, 2.0), (17, 2.9)])
def test_kernel_is_the_normalised_gaussian_of_opencvs_sigma(size, sigma):
    x = np.arange(size) - size // 2
    closed_form = np.exp(-(x**2) / (2 * sigma**2)) / np.exp(-(x**2) / (2 * sigma**2)).sum()
    kernel = opencv_gaussian_kernel(size)
    assert kernel.dtype == np.float32 and kernel.shape == (size,)
    np.testing.assert_allclose(kernel, closed_form, rtol=1e-7, atol=0)
    assert np.array_equal(kernel, kernel[::-1])


def test_kernel_values_for_size_11():
    # sigma = 0.3 * ((11 - 1) / 2 - 1) + 0.8 = 2: the centre tap is 1 / sum(exp(-x^2 / 8)).
    np.testing.assert_allclose(opencv_gaussian_kernel(11)[[0, 4, 5]], [0.00881223, 0.17699836, 0.20056541], atol=1e-8)


@pytest.mark.parametrize("size", [7, 10])
def test_kernel_refuses_tabulated_and_even_sizes(size):
    with pytest.raises(ValueError, match="odd and at least 9"):
        opencv_gaussian_kernel(size)


def test_blur_of_an_impulse_is_the_kernel_outer_product_rescaled_to_the_peak():
    m = np.zeros((1, 20, 20), np.float32)
    m[0, 10, 9] = 3.0
    k = opencv_gaussian_kernel(11).astype(np.float64)
    expected = np.zeros((20, 20))
    expected[5:16, 4:15] = np.outer(k, k) / k[5] ** 2 * 3.0
    np.testing.assert_allclose(opencv_gaussian_blur(m, 11)[0], expected, rtol=1e-6, atol=1e-7)


def test_blur_pads_with_zeros_and_matches_a_float64_correlation():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 9, 13)).astype(np.float32)
    k = opencv_gaussian_kernel(11).astype(np.float64)
    padded = np.pad(maps.astype(np.float64), ((0, 0), (5, 5), (5, 5)))  # zeros outside, not a reflection
    rows = sum(k[t] * padded[:, :, t:t + 13] for t in range(11))
    full = sum(k[t] * rows[:, t:t + 9, :] for t in range(11))
    expected = full * (maps.max(axis=(1, 2)) / full.max(axis=(1, 2)))[:, None, None]
    blurred = opencv_gaussian_blur(maps, 11)
    assert blurred.dtype == np.float32
    np.testing.assert_allclose(blurred, expected, rtol=2e-6)
    assert blurred[:, 0, 0].max() < blurred[:, 4, 6].min()  # the zeros pull the corners down


def test_blur_keeps_each_maximum_and_turns_an_all_zero_map_into_nan_as_mmpose():
    maps = np.stack([gaussian(20, 30) * 0.7, np.zeros((H, W), np.float32)])
    with np.errstate(invalid="ignore"):
        blurred = opencv_gaussian_blur(maps, 11)
    assert blurred[0].max() == np.float32(0.7)
    assert np.isnan(blurred[1]).all()


# --- the arg-max ----------------------------------------------------------------------------------------------

def test_heatmap_maximum_marks_non_positive_maxima_with_minus_one():
    maps = np.zeros((1, 3, 4, 5), np.float32)
    maps[0, 0, 2, 3] = 0.5
    maps[0, 1] = -1.0
    maps[0, 1, 1, 1] = -0.1
    xy, scores = heatmap_maximum(maps)
    assert xy.tolist() == [[[3, 2], [-1, -1], [-1, -1]]]
    np.testing.assert_array_equal(scores, np.float32([[0.5, -0.1, 0.0]]))


# --- MMPose MSRAHeatmap: the quarter step ---------------------------------------------------------------------

def decode_one(decoder, m: np.ndarray, joint: int = 0):
    keypoints, scores = decoder.decode(maps_with({joint: m}), None)
    return keypoints[0, joint], scores[0, joint]


def test_msra_steps_a_quarter_towards_the_higher_neighbour_then_scales_by_the_stride():
    kp, score = decode_one(MSRAHeatmapDecoder(), peak(20, 30, right=0.6, up=0.7))
    np.testing.assert_array_equal(kp, [(20 + 0.25) * 4, (30 - 0.25) * 4])
    assert score == np.float32(1.0)
    kp, _ = decode_one(MSRAHeatmapDecoder(), peak(20, 30))  # equal neighbours: no step
    np.testing.assert_array_equal(kp, [80.0, 120.0])


@pytest.mark.parametrize("x, y, moves_x, moves_y", [
    (1, 30, False, True),  # MMPose's x step needs 1 < x: column 1 never moves along x
    (0, 30, False, False),  # and column 0 not along y either (0 < x)
    (W - 2, 30, True, True),
    (W - 1, 30, False, True),
    (20, 0, False, False),  # row 0: no x step (0 < y), no y step
    (20, 1, True, False),
    (20, H - 2, True, True),
    (20, H - 1, True, False),
])
def test_msra_quarter_step_border_rules(x, y, moves_x, moves_y):
    kp, _ = decode_one(MSRAHeatmapDecoder(), peak(x, y, left=0.2, right=0.6, up=0.2, down=0.6))
    np.testing.assert_array_equal(kp, [(x + 0.25 * moves_x) * 4, (y + 0.25 * moves_y) * 4])


def test_msra_non_positive_maximum_gives_minus_one_times_the_stride_and_the_maximum_as_score():
    for unbiased in (False, True):
        decoder = MSRAHeatmapDecoder(unbiased=unbiased)
        keypoints, scores = decoder.decode(maps_with({3: np.full((H, W), -0.25, np.float32)}, n=2, fill=-2.0), None)
        np.testing.assert_array_equal(keypoints, np.full((2, NUM_JOINTS, 2), -4.0))
        assert scores[0, 3] == np.float32(-0.25) and scores[1, 0] == np.float32(-2.0)


def test_msra_keypoints_follow_input_size_over_heatmap_size():
    decoder = MSRAHeatmapDecoder(input_size=(288, 384), heatmap_size=(72, 96))
    maps = np.zeros((1, NUM_JOINTS, 96, 72), np.float32)
    maps[0, :, 50, 40] = 1.0
    keypoints, _ = decoder.decode(torch.from_numpy(maps), None)
    np.testing.assert_array_equal(keypoints[0, 0], [160.0, 200.0])
    with pytest.raises(ValueError, match="expects"):
        MSRAHeatmapDecoder().decode(torch.from_numpy(maps), None)


# --- MMPose MSRAHeatmap unbiased (DARK) -----------------------------------------------------------------------

@pytest.mark.parametrize("cx, cy", [(20.3, 30.7), (10.5, 12.25), (33.9, 50.05)])
def test_dark_finds_a_gaussians_sub_pixel_centre(cx, cy):
    kp, score = decode_one(MSRAHeatmapDecoder(unbiased=True), gaussian(cx, cy))
    assert np.abs(kp / 4 - [cx, cy]).max() < 0.01  # heatmap pixels
    assert score == gaussian(cx, cy).max()  # the unblurred maximum


def test_dark_leaves_keypoints_within_two_pixels_of_the_border_unrefined():
    # 1 < x < W - 2 and 1 < y < H - 2: a peak at x = 1 or at y = H - 2 keeps its integer position.
    for cx, cy in [(1.3, 30.4), (20.3, H - 2 + 0.3), (W - 2 + 0.2, 20.4)]:
        kp, _ = decode_one(MSRAHeatmapDecoder(unbiased=True), gaussian(cx, cy))
        np.testing.assert_array_equal(kp, np.round([cx, cy]) * 4)
    kp, _ = decode_one(MSRAHeatmapDecoder(unbiased=True), gaussian(2.3, 30.4))  # x = 2: refined
    assert 0 < abs(kp[0] / 4 - 2) < 0.5


def test_dark_newton_step_is_not_bounded_and_is_skipped_when_the_hessian_is_singular():
    # A flat plateau: equal logs around the maximum, Hessian 0, determinant 0: no step.
    kp, _ = decode_one(MSRAHeatmapDecoder(unbiased=True), np.full((H, W), 0.5, np.float32))
    np.testing.assert_array_equal(kp, [0.0, 0.0])
    # A wide Gaussian centred at y = 34 whose arg-max a small spike holds at y = 30: one step goes most of the
    # 4 pixels (pose.heatmaps bounds its step to 1 pixel; MMPose does not).
    m = gaussian(20, 34, sigma=8.0)
    m[30, 20] = m.max() + 0.01
    kp, _ = decode_one(MSRAHeatmapDecoder(unbiased=True), m)
    assert kp[0] / 4 == pytest.approx(20, abs=1e-3) and 33 < kp[1] / 4 < 34


# --- MMPose UDPHeatmap ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cx, cy", [(20.3, 30.7), (10.5, 12.25)])
def test_udp_finds_a_gaussians_centre_and_scales_by_size_minus_one(cx, cy):
    kp, _ = decode_one(UDPHeatmapDecoder(), gaussian(cx, cy))
    heatmap_xy = kp / [192, 256] * [W - 1, H - 1]
    assert np.abs(heatmap_xy - [cx, cy]).max() < 0.01


def test_udp_refines_on_the_border_with_edge_padding():
    # At x = 0 the padded left neighbour repeats the peak: with a lower right neighbour the step is -1/2 along x,
    # off the map; y moves towards its higher neighbour (DARK would leave such a keypoint alone).
    kp, _ = decode_one(UDPHeatmapDecoder(), peak(0, 30, right=0.5, up=0.2, down=0.6))
    x, y = kp / [192, 256] * [W - 1, H - 1]
    assert x == pytest.approx(-0.5, abs=0.01) and 30 < y < 30.5


def test_udp_no_peak_keypoint_reads_the_previous_joints_padded_map_as_mmpose_does():
    # (-1, -1) indexes the flat stack of padded maps at its joint's first element: its up/left neighbours are the
    # last elements of the previous joint's map (for joint 0, of the last joint's).
    decoder = UDPHeatmapDecoder()
    last = NUM_JOINTS - 1
    keypoints, scores = decoder.decode(maps_with({last: gaussian(20, 30)}, fill=-1.0), None)
    assert np.isfinite(keypoints).all() and (scores[0, :last] == -1).all()
    moved, _ = decoder.decode(maps_with({last: gaussian(W - 1, H - 1)}, fill=-1.0), None)  # bottom-right corner
    assert np.abs(moved[0, 0] - keypoints[0, 0]).min() > 0.1
    np.testing.assert_array_equal(moved[0, 1:last], keypoints[0, 1:last])


# --- flip tests of the heatmap decoders -----------------------------------------------------------------------

@pytest.mark.parametrize("decoder", [MSRAHeatmapDecoder(shift_flipped=False), MSRAHeatmapDecoder(unbiased=True, shift_flipped=False),
                                     UDPHeatmapDecoder(), SimpleBaselinesDecoder(shift_flipped=False)])
def test_flip_test_of_a_mirror_symmetric_output_changes_nothing(decoder):
    rng = np.random.default_rng(1)
    output = torch.from_numpy(np.stack([gaussian(*rng.uniform(3, 40, 2)) for _ in range(NUM_JOINTS)])[None])
    plain = decoder.decode(output, None)
    flipped = decoder.decode(output, mirrored(output))
    np.testing.assert_array_equal(flipped[0], plain[0])
    np.testing.assert_array_equal(flipped[1], plain[1])


def test_flip_test_swaps_left_and_right_joints_and_mirrors_x():
    output = maps_with({})
    flipped_output = maps_with({1: peak(10, 20)})  # left eye on the mirrored crop: the right eye at x = W - 1 - 10
    keypoints, scores = MSRAHeatmapDecoder(shift_flipped=False).decode(output, flipped_output)
    np.testing.assert_array_equal(keypoints[0, 2], [(W - 1 - 10) * 4, 20 * 4])
    assert scores[0, 2] == np.float32(0.5) and scores[0, 1] == 0  # the average of 0 and 1


def test_shift_moves_the_mirrored_maps_one_pixel_right():
    flipped_output = maps_with({0: peak(10, 20)})
    for shift, x in [(False, W - 1 - 10), (True, W - 1 - 10 + 1)]:
        for decoder in (MSRAHeatmapDecoder(shift_flipped=shift), SimpleBaselinesDecoder(shift_flipped=shift)):
            keypoints, _ = decoder.decode(maps_with({}), flipped_output)
            assert keypoints[0, 0, 0] == x * 4
    # Column 0 keeps its own value after the shift (it is not zeroed): columns 0 and 1 tie, the first wins.
    edge = maps_with({0: peak(W - 1, 20, left=0.0, up=0.0, down=0.0)})
    keypoints, scores = MSRAHeatmapDecoder(shift_flipped=True).decode(maps_with({}, fill=-0.5), edge)
    assert keypoints[0, 0, 0] == 0.0 and scores[0, 0] == np.float32(0.25)


def test_flip_averaging_equals_the_releases_flip_back_pair_swap():
    rng = np.random.default_rng(2)
    output = torch.from_numpy(rng.random((2, NUM_JOINTS, H, W), np.float32))
    flipped_output = torch.from_numpy(rng.random((2, NUM_JOINTS, H, W), np.float32))
    back = flipped_output.numpy()[..., ::-1].copy()
    for left, right in FLIP_PAIRS:
        back[:, [left, right]] = back[:, [right, left]]
    back[..., 1:] = back[..., :-1].copy()
    expected = SimpleBaselinesDecoder(shift_flipped=False).decode(torch.from_numpy((output.numpy() + back) * 0.5), None)
    got = SimpleBaselinesDecoder(shift_flipped=True).decode(output, flipped_output)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# --- the original releases ------------------------------------------------------------------------------------

@pytest.mark.parametrize("x, y, moves", [(20, 30, True), (2, 2, True), (W - 2, H - 2, True), (1, 30, False), (20, 1, False),
                                         (W - 1, 30, False), (20, H - 1, False)])
def test_releases_quarter_step_moves_both_axes_only_inside(x, y, moves):
    kp, _ = decode_one(SimpleBaselinesDecoder(), peak(x, y, left=0.2, right=0.6, up=0.6, down=0.2))
    np.testing.assert_array_equal(kp, [(x + 0.25 * moves) * 4, (y - 0.25 * moves) * 4])


def test_releases_non_positive_maximum_gives_the_origin_and_post_process_can_be_off():
    keypoints, scores = SimpleBaselinesDecoder().decode(maps_with({5: peak(20, 30, right=0.9)}, fill=-0.5), None)
    np.testing.assert_array_equal(keypoints[0, 0], [0.0, 0.0])
    assert scores[0, 0] == np.float32(-0.5)
    np.testing.assert_array_equal(keypoints[0, 5], [20.25 * 4, 30 * 4])
    keypoints, _ = SimpleBaselinesDecoder(post_process=False).decode(maps_with({5: peak(20, 30, right=0.9)}), None)
    np.testing.assert_array_equal(keypoints[0, 5], [80.0, 120.0])


# --- MMPose SimCCLabel (RTMPose) ------------------------------------------------------------------------------

def simcc(x_bins: dict[int, int], y_bins: dict[int, int], n: int = 1, fill: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    sx, sy = np.full((n, NUM_JOINTS, 384), fill, np.float32), np.full((n, NUM_JOINTS, 512), fill, np.float32)
    for joint, b in x_bins.items():
        sx[:, joint, b] = 2.0
    for joint, b in y_bins.items():
        sy[:, joint, b] = 1.5
    return torch.from_numpy(sx), torch.from_numpy(sy)


def test_simcc_bin_over_split_ratio_and_the_smaller_maximum_as_score():
    keypoints, scores = SimCCDecoder().decode(simcc({0: 101}, {0: 300}), None)
    np.testing.assert_array_equal(keypoints[0, 0], [50.5, 150.0])
    assert keypoints.dtype == np.float64 and scores.dtype == np.float32
    assert scores[0, 0] == np.float32(1.5) and scores[0, 1] == np.float32(0.1)  # raw values, no softmax


def test_simcc_non_positive_score_gives_minus_half_a_pixel():
    sx, sy = simcc({0: 101}, {0: 300}, fill=-0.1)
    keypoints, scores = SimCCDecoder().decode((sx, sy), None)
    np.testing.assert_array_equal(keypoints[0, 1], [-0.5, -0.5])
    assert scores[0, 1] == np.float32(-0.1)


def test_simcc_flip_reverses_x_bins_and_swaps_joints_without_shift():
    zero_x, zero_y = simcc({}, {}, fill=0.0)
    flipped = simcc({5: 100}, {5: 300}, fill=0.0)  # left shoulder on the mirrored crop
    keypoints, scores = SimCCDecoder().decode((zero_x, zero_y), flipped)
    np.testing.assert_array_equal(keypoints[0, 6], [(383 - 100) / 2, 150.0])
    assert scores[0, 6] == np.float32(0.75)  # min(2, 1.5) / 2
    # A mirror-symmetric output: the flip test changes nothing.
    rng = np.random.default_rng(3)
    sx, sy = torch.from_numpy(rng.random((2, NUM_JOINTS, 384), np.float32)), torch.from_numpy(rng.random((2, NUM_JOINTS, 512), np.float32))
    index = torch.as_tensor(flip_index())
    plain = SimCCDecoder().decode((sx, sy), None)
    both = SimCCDecoder().decode((sx, sy), (sx[:, index].flip(-1), sy[:, index]))
    np.testing.assert_array_equal(both[0], plain[0])
    np.testing.assert_array_equal(both[1], plain[1])


def test_simcc_checks_the_number_of_bins():
    with pytest.raises(ValueError, match="bins"):
        SimCCDecoder(input_size=(288, 384)).decode(simcc({}, {}), None)


def test_every_decoder_returns_empty_arrays_for_no_crops():
    empty = torch.zeros(0, NUM_JOINTS, H, W)
    heatmap_decoders = [MSRAHeatmapDecoder(), MSRAHeatmapDecoder(unbiased=True), UDPHeatmapDecoder(), SimpleBaselinesDecoder()]
    results = [d.decode(empty, empty) for d in heatmap_decoders]
    results.append(SimCCDecoder().decode((torch.zeros(0, NUM_JOINTS, 384), torch.zeros(0, NUM_JOINTS, 512)), None))
    for keypoints, scores in results:
        assert keypoints.shape == (0, NUM_JOINTS, 2) and keypoints.dtype == np.float64
        assert scores.shape == (0, NUM_JOINTS) and scores.dtype == np.float32
