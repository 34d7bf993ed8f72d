"""pose.codecs: each framework's decoding formula pinned on small hand-made and random maps; the training-target
encoders compared bit for bit with MMPose's and the releases' targets (tests/data/goldens/targets_*.npz, made by
tools/make_training_goldens.py) and pinned on their edge rules.

(The bit-for-bit comparison of the decoders against MMPose, OpenCV and the original repositories needs those
packages and is a scratch script, not a test: see the module docstring.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pose.codecs import (
    MSRAHeatmapDecoder,
    MSRAHeatmapEncoder,
    SimCCDecoder,
    SimpleBaselinesDecoder,
    UDPHeatmapDecoder,
    UDPHeatmapEncoder,
    encoder_for,
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
    rows = sum(k[t] * padded[:, :, t : t + 13] for t in range(11))
    full = sum(k[t] * rows[:, t : t + 9, :] for t in range(11))
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


@pytest.mark.parametrize(
    "x, y, moves_x, moves_y",
    [
        (1, 30, False, True),  # MMPose's x step needs 1 < x: column 1 never moves along x
        (0, 30, False, False),  # and column 0 not along y either (0 < x)
        (W - 2, 30, True, True),
        (W - 1, 30, False, True),
        (20, 0, False, False),  # row 0: no x step (0 < y), no y step
        (20, 1, True, False),
        (20, H - 2, True, True),
        (20, H - 1, True, False),
    ],
)
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


@pytest.mark.parametrize(
    "decoder",
    [
        MSRAHeatmapDecoder(shift_flipped=False),
        MSRAHeatmapDecoder(unbiased=True, shift_flipped=False),
        UDPHeatmapDecoder(),
        SimpleBaselinesDecoder(shift_flipped=False),
    ],
)
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


@pytest.mark.parametrize(
    "x, y, moves",
    [
        (20, 30, True),
        (2, 2, True),
        (W - 2, H - 2, True),
        (1, 30, False),
        (20, 1, False),
        (W - 1, 30, False),
        (20, H - 1, False),
    ],
)
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


def simcc(
    x_bins: dict[int, int], y_bins: dict[int, int], n: int = 1, fill: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
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
    sx, sy = (
        torch.from_numpy(rng.random((2, NUM_JOINTS, 384), np.float32)),
        torch.from_numpy(rng.random((2, NUM_JOINTS, 512), np.float32)),
    )
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
    heatmap_decoders = [
        MSRAHeatmapDecoder(),
        MSRAHeatmapDecoder(unbiased=True),
        UDPHeatmapDecoder(),
        SimpleBaselinesDecoder(),
    ]
    results = [d.decode(empty, empty) for d in heatmap_decoders]
    results.append(SimCCDecoder().decode((torch.zeros(0, NUM_JOINTS, 384), torch.zeros(0, NUM_JOINTS, 512)), None))
    for keypoints, scores in results:
        assert keypoints.shape == (0, NUM_JOINTS, 2) and keypoints.dtype == np.float64
        assert scores.shape == (0, NUM_JOINTS) and scores.dtype == np.float32


# --- Training targets (encoders) --------------------------------------------------------------------------------

GOLDENS = Path(__file__).parent / "data" / "goldens"


def golden_targets(size: str) -> dict[str, np.ndarray]:
    with np.load(GOLDENS / f"targets_{size}.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("size", ["256x192", "384x288"])
def test_encoders_equal_mmposes_and_the_releases_targets_bit_for_bit(size):
    g = golden_targets(size)
    sizes = tuple(g["input_size"]), tuple(g["heatmap_size"])
    sigma = float(g["sigma"])
    float32, float64 = g["keypoints"].astype(np.float32), g["keypoints"]  # MMPose's pipeline dtype, the releases'
    dark_samples = len(g["dark_heatmaps"])  # only the samples of hand-placed cases are stored for DARK
    cases = {
        "msra": (MSRAHeatmapEncoder(*sizes, sigma), float32),
        "dark": (MSRAHeatmapEncoder(*sizes, sigma, unbiased=True), float32),
        "udp": (UDPHeatmapEncoder(*sizes, sigma), float32),
        "release": (MSRAHeatmapEncoder(*sizes, sigma), float64),
    }
    for name, (encoder, keypoints) in cases.items():
        heatmaps, weights = encoder.encode(keypoints, g["visible"])
        assert heatmaps.dtype == np.float32 and weights.dtype == np.float32
        expected = g[f"{name}_heatmaps"]
        np.testing.assert_array_equal(heatmaps[:dark_samples] if name == "dark" else heatmaps, expected, err_msg=name)
        np.testing.assert_array_equal(weights, g[f"{name}_weights"], err_msg=name)
    # The goldens hold the cases that matter: zero weights, weight-1 joints off the input, invisible joints.
    off_input = (float64 < 0) | (float64 >= np.asarray(sizes[0]))
    assert ((g["msra_weights"] == 1) & off_input.any(-1)).sum() >= 10
    assert (g["msra_weights"] == 0).sum() >= 10 and (g["visible"] == 0).sum() >= 2
    # UDP under numpy 2: MMPose then computes the Gaussian in float64; a few float32 units apart.
    heatmaps, _ = cases["udp"][0].encode(float32, g["visible"])
    numpy2 = g["udp_heatmaps"] + g["udp_heatmaps_numpy2_minus_numpy1"]
    assert 0 < np.abs(heatmaps - numpy2).max() <= 2e-7


@pytest.mark.parametrize("size", ["256x192", "384x288"])
def test_releases_and_mmpose_targets_differ_only_where_float32_keypoints_round_differently(size):
    g = golden_targets(size)
    differ = (g["release_heatmaps"] != g["msra_heatmaps"]).any(axis=(2, 3)) | (
        g["release_weights"] != g["msra_weights"]
    )
    assert differ.any()
    for n, k in zip(*np.nonzero(differ)):
        # In the heatmap frame x / 4 + 0.5 sits just below an integer in float64 and reaches it in float32.
        u64 = g["keypoints"][n, k] / 4 + 0.5
        u32 = g["keypoints"][n, k].astype(np.float32) / np.float32(4) + np.float32(0.5)
        assert (u64.astype(np.int64) != u32.astype(np.int64)).any()


def biased(x: float, y: float, visible: float = 1.0, **kwargs) -> tuple[np.ndarray, float]:
    """One joint at input pixel (x, y) through the 256x192 biased encoder -> its map (64, 48) and weight."""
    heatmaps, weights = MSRAHeatmapEncoder(**kwargs).encode(np.array([[[x, y]]]), np.array([[visible]]))
    return heatmaps[0, 0], float(weights[0, 0])


def test_biased_target_peaks_at_one_on_the_rounded_centre_with_a_cut_13_pixel_window():
    m, weight = biased(4 * 20.4, 4 * 30.6)  # heatmap (20.4, 30.6): centre (20, 31)
    assert weight == 1 and m[31, 20] == 1 and m.max() == 1
    assert m[31, 21] == m[31, 19] == m[30, 20] == np.exp(np.float32(-1 / 8))
    assert m[31, 26] == np.exp(np.float32(-36 / 8)) and m[31, 27] == 0 and m[37, 26] > 0 and m[38, 20] == 0
    assert (m > 0).sum() == 13 * 13


@pytest.mark.parametrize("u, centre", [(-1.2, 0), (-1.5, -1), (0.4999, 0), (0.5, 1), (-0.49, 0), (2.5, 3)])
def test_biased_centre_is_x_plus_half_truncated_toward_zero(u, centre):
    m, _ = biased(4 * u, 4 * 30.0)
    # The row through the centre: 1 at the centre, or exp(-d^2 / 8) at column 0 when the centre is left of it.
    assert m[30, max(centre, 0)] == np.exp(np.float32(-((max(centre, 0) - centre) ** 2) / 8))
    assert m[30].argmax() == max(centre, 0)


@pytest.mark.parametrize(
    "u, weight, drawn",
    [
        (-7.0, 1, True),  # -6.5 truncates to centre -6: the window reaches column 0
        (-7.5, 1, False),  # centre -7: br = 0 is not < 0: weight 1, nothing drawn (the releases' quirk)
        (-8.0, 1, False),  # -7.5 truncates to -7
        (-8.5, 0, False),  # centre -8: br = -1
        (53.0, 1, True),  # centre 53: ul = 47, the last column
        (53.49, 1, True),
        (53.5, 0, False),  # centre 54: ul = 48 >= w
    ],
)
def test_biased_weight_stays_one_while_any_part_of_the_window_is_on_the_map(u, weight, drawn):
    m, w = biased(4 * u, 100.0)
    assert w == weight and (m.max() > 0) == drawn


def test_biased_y_rules_use_the_heatmap_height():
    assert biased(100.0, 4 * 69.49)[1] == 1 and biased(100.0, 4 * 69.5)[1] == 0  # centres 69 (ul 63) and 70 (ul 64)
    assert biased(100.0, 4 * -8.0)[1] == 1 and biased(100.0, 4 * -8.5)[1] == 0


def test_invisible_joints_get_an_empty_map_and_weight_zero():
    for encoder in (MSRAHeatmapEncoder(), MSRAHeatmapEncoder(unbiased=True), UDPHeatmapEncoder()):
        heatmaps, weights = encoder.encode(np.array([[[90.0, 120.0], [90.0, 120.0]]]), np.array([[0, 1]]))
        assert weights.tolist() == [[0, 1]] and heatmaps[0, 0].max() == 0 and heatmaps[0, 1].max() > 0.9


@pytest.mark.parametrize("u, weight", [(-7.0, 1), (-7.01, 0), (53.99, 1), (54.0, 0)])
def test_dark_weight_rule_uses_the_float_centre(u, weight):
    heatmaps, weights = MSRAHeatmapEncoder(unbiased=True).encode(np.array([[[4 * u, 100.0]]]), np.ones((1, 1)))
    assert weights[0, 0] == weight
    assert (heatmaps.max() > 0) == bool(weight)


def test_dark_target_is_an_uncut_gaussian_of_the_float_centre():
    x, y = 20.3, 30.7
    heatmaps, _ = MSRAHeatmapEncoder(unbiased=True).encode(np.array([[[4 * x, 4 * y]]], np.float32), np.ones((1, 1)))
    m = heatmaps[0, 0]
    yy, xx = np.mgrid[0:64, 0:48]
    # float32 arguments up to ~100: relative errors up to ~100 float32 epsilons in the far tail
    np.testing.assert_allclose(m, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8), rtol=2e-5, atol=1e-30)
    # Not cut at 3 sigma: 20 and 23 pixels (10 and 11 sigma) from the centre still > 0; 31 pixels away, float32 0
    assert m[30, 0] > 0 and m[8, 20] > 0 and m[0, 20] == 0


def test_udp_target_is_the_gaussian_of_the_float_centre_in_udps_frame_inside_the_window():
    x, y = 20.3, 30.7  # heatmap units of UDP's frame: input pixel = x * 191 / 47
    keypoints = np.array([[[x * 191 / 47, y * 255 / 63]]], np.float32)
    heatmaps, weights = UDPHeatmapEncoder().encode(keypoints, np.ones((1, 1)))
    m = heatmaps[0, 0]
    yy, xx = np.mgrid[0:64, 0:48]
    window = (np.abs(xx - 20) <= 6) & (np.abs(yy - 31) <= 6)  # the window around the rounded centre (20, 31)
    np.testing.assert_allclose(m[window], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8)[window], rtol=1e-5)
    assert (m[~window] == 0).all() and weights[0, 0] == 1


@pytest.mark.parametrize(
    "encoder, decoder, tolerance",
    [
        (MSRAHeatmapEncoder(), MSRAHeatmapDecoder(), None),
        (MSRAHeatmapEncoder(unbiased=True), MSRAHeatmapDecoder(unbiased=True), 0.25),
        (UDPHeatmapEncoder(), UDPHeatmapDecoder(), 1.0),
        (MSRAHeatmapEncoder((288, 384), (72, 96), 3), MSRAHeatmapDecoder((288, 384), (72, 96)), None),
        (UDPHeatmapEncoder((288, 384), (72, 96), 3), UDPHeatmapDecoder((288, 384), (72, 96)), 1.0),
    ],
)
def test_decoding_the_target_gives_back_the_keypoints(encoder, decoder, tolerance):
    rng = np.random.default_rng(5)
    w, h = encoder.input_size
    keypoints = rng.uniform(16, [w - 16, h - 16], (4, NUM_JOINTS, 2)).astype(np.float32)
    heatmaps, weights = encoder.encode(keypoints, np.ones((4, NUM_JOINTS)))
    decoded, scores = decoder.decode(torch.from_numpy(heatmaps), None)
    assert (weights == 1).all() and (scores > 0.9).all()
    if tolerance is None:
        # Biased: the integer centre exactly (equal neighbours: the quarter step does not move), times the stride.
        np.testing.assert_array_equal(decoded, 4 * (keypoints / np.float32(4) + np.float32(0.5)).astype(np.int64))
        assert np.abs(decoded - keypoints).max() <= 2
    else:
        assert np.abs(decoded - keypoints).max() < tolerance


def test_encoding_a_batch_equals_encoding_each_sample():
    rng = np.random.default_rng(6)
    keypoints = rng.uniform(-40, 230, (5, NUM_JOINTS, 2)).astype(np.float32)
    visible = (rng.random((5, NUM_JOINTS)) > 0.2).astype(np.float32)
    for encoder in (MSRAHeatmapEncoder(), MSRAHeatmapEncoder(unbiased=True), UDPHeatmapEncoder()):
        heatmaps, weights = encoder.encode(keypoints, visible)
        for i in range(5):
            one = encoder.encode(keypoints[i : i + 1], visible[i : i + 1])
            np.testing.assert_array_equal(heatmaps[i : i + 1], one[0])
            np.testing.assert_array_equal(weights[i : i + 1], one[1])
        assert encoder.encode(keypoints[:0], visible[:0])[0].shape == (0, NUM_JOINTS, 64, 48)


def test_encoder_for_maps_codec_names_and_refuses_others():
    assert encoder_for("msra", (192, 256), (48, 64), 2) == MSRAHeatmapEncoder((192, 256), (48, 64), 2, unbiased=False)
    assert encoder_for("dark", (288, 384), (72, 96), 3) == MSRAHeatmapEncoder((288, 384), (72, 96), 3, unbiased=True)
    assert encoder_for("udp", (192, 256), (48, 64), 2) == UDPHeatmapEncoder((192, 256), (48, 64), 2)
    with pytest.raises(ValueError, match="unknown heatmap codec 'simcc'"):
        encoder_for("simcc", (192, 256), (48, 64), 2)
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        MSRAHeatmapEncoder().encode(np.zeros((17, 2)), np.ones(17))


# --------------------------------------------------------------------------------------------
# SimCC labels (RTMPose)


def test_simcc_labels_equal_mmposes_bit_for_bit():
    from pose.codecs import SimCCLabelEncoder

    with np.load(GOLDENS / "targets_simcc_256x192.npz") as f:
        g = {k: f[k] for k in f.files}
    encoder = SimCCLabelEncoder(tuple(g["input_size"]), tuple(g["sigma"]), float(g["split_ratio"]))
    (x_labels, y_labels), weights = encoder.encode(g["keypoints"], g["visible"])
    assert (
        x_labels.dtype == y_labels.dtype == weights.dtype == np.float32
        and x_labels.shape[-1] == 384
        and y_labels.shape[-1] == 512
    )
    np.testing.assert_array_equal(x_labels, g["x_labels"])
    np.testing.assert_array_equal(y_labels, g["y_labels"])
    np.testing.assert_array_equal(weights, g["weights"])
    # the golden holds the edge cases: visible joints dropped on either side of each axis, kept ones off the input
    dropped = (weights == 0) & (g["visible"] > 0)
    assert dropped[:2].sum() >= 2 and dropped[2:4].sum() >= 2
    off_input = ((g["keypoints"] < 0) | (g["keypoints"] >= g["input_size"])).any(-1)
    assert ((weights == 1) & off_input).sum() >= 4 and (g["visible"] == 0).sum() >= 2
    # under numpy 2 MMPose computes in float64 and rounds once: a float32 unit apart at most
    numpy2 = g["x_labels"] + g["x_labels_numpy2_minus_numpy1"]
    assert 0 < np.abs(x_labels - numpy2).max() <= 1.2e-7


def test_simcc_labels_peak_at_the_rounded_bin_and_round_halves_to_even():
    from pose.codecs import SimCCLabelEncoder

    keypoints = np.array([[[10.25, 20.75], [10.75, 0.0], [-2.0, 100.0]]])  # bins 20.5 -> 20, 41.5 -> 42; 21.5 -> 22
    (x_labels, y_labels), weights = SimCCLabelEncoder().encode(keypoints, np.ones((1, 3)))
    assert x_labels[0, 0].argmax() == 20 and y_labels[0, 0].argmax() == 42 and x_labels[0, 1].argmax() == 22
    assert (
        x_labels[0, 0].max() == 1.0 and x_labels[0, 2].argmax() == 0 and x_labels[0, 2, 0] < 1
    )  # off the input: weight 1, cut peak
    assert weights.tolist() == [[1.0, 1.0, 1.0]]
    far = SimCCLabelEncoder().encode(
        np.array([[[-8.0, 10.0], [10.0, 265.0]]]), np.ones((1, 2))
    )  # -16 + 14.7 + 1 < 0; 530 - 16.98 >= 512
    assert far[1].tolist() == [[0.0, 0.0]] and not far[0][0].any() and not far[0][1].any()
