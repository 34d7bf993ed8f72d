import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pose.augment import (
    HRNET_AUGMENT,
    SIMPLE_BASELINES_AUGMENT,
    AugmentConfig,
    AugmentParams,
    MMPoseAugment,
    ReleaseAugment,
    jitter_colors,
    mmpose_center_scale,
    normalize,
    reference_sample,
    release_center_scale,
    sample_mmpose,
    sample_release,
    topdown_sample,
    truncated_normal,
)
from pose.geometry import apply_affine, box_to_center_size
from pose.joints import JOINT_NAMES, NUM_JOINTS, flip_index
from pose.topdown import CropConvention

CROP_W, CROP_H = 288, 384  # the person_crops size
LEFT_WRIST, RIGHT_WRIST = JOINT_NAMES.index("left_wrist"), JOINT_NAMES.index("right_wrist")
GEOMETRY_ONLY = AugmentConfig(color_jitter=0.0)


def standing_person() -> tuple[np.ndarray, np.ndarray]:
    """A person box in the middle of the crop and 17 labelled joints (v = 2) at integer pixels,
    the upper body in its top half, the lower body in its bottom half, left joints on image right."""
    bbox = np.array([94.0, 92.0, 100.0, 200.0])
    # Each joint: (x offset from the box centre, y from the box top); left joints at +x.
    layout = [
        (0, 10),
        (6, 5),
        (-6, 5),
        (12, 8),
        (-12, 8),
        (25, 40),
        (-25, 40),
        (35, 70),
        (-35, 70),
        (40, 95),
        (-40, 95),
        (15, 100),
        (-15, 100),
        (18, 150),
        (-18, 150),
        (20, 195),
        (-20, 195),
    ]
    keypoints = np.array([[144 + dx, 92 + dy, 2] for dx, dy in layout], dtype=np.float64)
    return bbox, keypoints


def dot_image(x: float, y: float) -> np.ndarray:
    crop = np.zeros((CROP_H, CROP_W, 3), np.uint8)
    xi, yi = int(round(x)), int(round(y))
    crop[yi - 1 : yi + 2, xi - 1 : xi + 2] = 255
    return crop


def dot_position(image: np.ndarray) -> np.ndarray:
    """Intensity centroid of the bright pixels: (x, y)."""
    values = image[..., 0].astype(np.float64)
    values[values < values.max() * 0.3] = 0
    ys, xs = np.nonzero(values)
    weights = values[ys, xs]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def test_evaluation_puts_the_box_centre_at_the_input_centre():
    bbox, keypoints = standing_person()
    sample = topdown_sample(np.zeros((CROP_H, CROP_W, 3), np.uint8), bbox, keypoints, rng=None)
    assert sample["image"].shape == (256, 192, 3) and sample["image"].dtype == np.uint8
    assert sample["keypoints"].shape == (NUM_JOINTS, 2) and sample["keypoints"].dtype == np.float32
    assert sample["visible"].shape == (NUM_JOINTS,) and sample["visible"].dtype == np.float32
    assert sample["input_from_crop"].shape == (2, 3) and sample["input_from_crop"].dtype == np.float64
    center, size = box_to_center_size(bbox, 192 / 256, 1.25)
    np.testing.assert_allclose(apply_affine(center, sample["input_from_crop"]), [95.5, 127.5], atol=1e-9)
    # Aspect kept: both axes scaled alike, box height (200 > 0.75 * 100 / 0.75) fills 1 / 1.25 of the input.
    linear = sample["input_from_crop"][:, :2]
    np.testing.assert_allclose(linear, np.eye(2) * 256 / size[1], atol=1e-9)
    np.testing.assert_array_equal(sample["visible"], np.ones(NUM_JOINTS))


def test_evaluation_is_deterministic():
    bbox, keypoints = standing_person()
    crop = np.random.default_rng(0).integers(0, 255, (CROP_H, CROP_W, 3), dtype=np.uint8)
    a, b = (topdown_sample(crop, bbox, keypoints, rng=None) for _ in range(2))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(
            rotation_prob=0.0, scale=0.0, half_body_prob=0.0, flip=False, color_jitter=0.0
        ),  # evaluation geometry through the rng path
        GEOMETRY_ONLY,
        dataclasses.replace(GEOMETRY_ONLY, half_body_prob=1.0, rotation_prob=1.0),
    ],
    ids=["identity", "default", "half-body-and-rotation"],
)
def test_a_dot_at_a_joint_lands_on_the_returned_keypoint(config):
    bbox, keypoints = standing_person()
    joints = [0, LEFT_WRIST, RIGHT_WRIST, 11, 15, 16]
    seen_flip = False
    for seed in range(6):
        for joint in joints:
            sample = topdown_sample(
                dot_image(*keypoints[joint, :2]), bbox, keypoints, np.random.default_rng(seed), config
            )
            flipped = np.linalg.det(sample["input_from_crop"][:, :2]) < 0
            seen_flip |= flipped
            # After a flip the dot drawn at joint j is the mirrored joint: keypoints[flip_index()[j]].
            slot = flip_index()[joint] if flipped else joint
            if sample["visible"][slot] == 0:
                continue
            np.testing.assert_allclose(
                dot_position(sample["image"]), sample["keypoints"][slot], atol=1.0, err_msg=f"seed {seed} joint {joint}"
            )
    assert seen_flip == config.flip


def test_flip_swaps_left_and_right_joints():
    bbox, keypoints = standing_person()
    config = AugmentConfig(rotation_prob=0.0, scale=0.0, half_body_prob=0.0, color_jitter=0.0)
    crop = dot_image(*keypoints[LEFT_WRIST, :2])
    flipped = next(
        sample
        for seed in range(50)
        if np.linalg.det(
            (sample := topdown_sample(crop, bbox, keypoints, np.random.default_rng(seed), config))["input_from_crop"][
                :, :2
            ]
        )
        < 0
    )
    plain = topdown_sample(crop, bbox, keypoints, rng=None)
    # The person's left wrist is on image right (x > centre); mirrored, it is on the left and,
    # looking like a right wrist, is labelled right_wrist.
    assert plain["keypoints"][LEFT_WRIST, 0] > 96 and flipped["keypoints"][RIGHT_WRIST, 0] < 96
    np.testing.assert_allclose(
        flipped["keypoints"][RIGHT_WRIST],
        [191 - plain["keypoints"][LEFT_WRIST, 0], plain["keypoints"][LEFT_WRIST, 1]],
        atol=1e-4,
    )
    np.testing.assert_allclose(dot_position(flipped["image"]), flipped["keypoints"][RIGHT_WRIST], atol=1.0)
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])


def test_unlabelled_joints_stay_invisible_under_augmentation():
    bbox, keypoints = standing_person()
    keypoints[[LEFT_WRIST, 3], :] = 0.0  # COCO's unlabelled joints: (0, 0, 0)
    for seed in range(20):
        sample = topdown_sample(np.zeros((CROP_H, CROP_W, 3), np.uint8), bbox, keypoints, np.random.default_rng(seed))
        flipped = np.linalg.det(sample["input_from_crop"][:, :2]) < 0
        hidden = flip_index()[[LEFT_WRIST, 3]] if flipped else [LEFT_WRIST, 3]
        assert sample["visible"][hidden].sum() == 0
        np.testing.assert_array_equal(sample["keypoints"][hidden], 0.0)


def test_joints_pushed_outside_the_input_are_not_visible():
    bbox, keypoints = standing_person()
    keypoints[0, :2] = [3.0, 3.0]  # in the crop's margin, outside the padded box
    sample = topdown_sample(np.zeros((CROP_H, CROP_W, 3), np.uint8), bbox, keypoints, rng=None)
    assert sample["visible"][0] == 0 and sample["visible"][1:].all()
    assert (sample["keypoints"][0] < 0).all()
    # Zoomed in (a 0.5 scale of the box), the feet leave the input.
    zoomed = topdown_sample(
        np.zeros((CROP_H, CROP_W, 3), np.uint8), bbox, standing_person()[1], rng=None, config=AugmentConfig(padding=0.6)
    )
    assert zoomed["visible"][[15, 16]].sum() == 0 and zoomed["visible"][[5, 6]].all()


def test_color_jitter_draws_factors_and_leaves_geometry():
    bbox, keypoints = standing_person()
    crop = np.random.default_rng(1).integers(0, 255, (CROP_H, CROP_W, 3), dtype=np.uint8)
    config = AugmentConfig(rotation_prob=0.0, scale=0.0, half_body_prob=0.0, flip=False, color_jitter=0.4)
    jittered = topdown_sample(crop, bbox, keypoints, np.random.default_rng(3), config)
    plain = topdown_sample(crop, bbox, keypoints, rng=None)
    # The pixels are jittered later, on the device: the sample carries the factors.
    factors = jittered["color"]
    assert factors.shape == (3,) and factors.dtype == np.float32
    assert ((factors >= 0.6) & (factors <= 1.4)).all() and not np.allclose(factors, 1.0)
    np.testing.assert_array_equal(plain["color"], np.ones(3))
    np.testing.assert_array_equal(jittered["image"], plain["image"])
    np.testing.assert_array_equal(jittered["keypoints"], plain["keypoints"])


def test_jitter_colors_follows_pillow_image_enhance():
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (3, 20, 16, 3), dtype=np.uint8)
    images[1] = images[1] // 4 + 180  # a bright one, so that clamping matters
    factors = np.array([[1.3, 0.7, 1.2], [1.2, 1.4, 0.6], [0.8, 1.0, 1.0]], np.float32)
    out = jitter_colors(torch.from_numpy(images), torch.from_numpy(factors))
    assert out.dtype == torch.float32 and out.shape == images.shape
    for image, (brightness, contrast, saturation), got in zip(images, factors, out.numpy()):
        pil = ImageEnhance.Brightness(Image.fromarray(image)).enhance(brightness)
        pil = ImageEnhance.Contrast(pil).enhance(contrast)
        pil = ImageEnhance.Color(pil).enhance(saturation)
        # Pillow truncates to uint8 after each of the three blends (and takes an integer mean
        # grey); this does not: at most a grey level or so per blend apart.
        difference = np.abs(got - np.asarray(pil, np.float32))
        assert difference.mean() < 2.0 and difference.max() <= 4.0
    # Factors of one leave the image as it is, and a float input is not changed in place.
    floats = torch.from_numpy(images).float()
    torch.testing.assert_close(jitter_colors(floats, torch.ones(3, 3)), floats)
    jitter_colors(floats, torch.from_numpy(factors))
    torch.testing.assert_close(floats, torch.from_numpy(images).float())


def test_normalize_gives_imagenet_normalised_channels_last_nchw():
    images = np.zeros((2, 4, 5, 3), np.uint8)
    images[..., 0] = 255
    out = normalize(images)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[:, 0], torch.full((2, 4, 5), (1 - 0.485) / 0.229))
    torch.testing.assert_close(out[:, 2], torch.full((2, 4, 5), -0.406 / 0.225))
    torch.testing.assert_close(normalize(torch.from_numpy(images)), out)
    with pytest.raises(ValueError, match="N, H, W, 3"):
        normalize(images[0])


# --- The references' augmentation against their own code (tools/make_augment_goldens.py) -------------

GOLDENS = Path(__file__).parent / "data" / "goldens"
DRAWS = 5_000  # ours, against the reference's 20,000
HALF_BODY_DRAWS = 3_000


def _golden(name: str) -> dict:
    with np.load(GOLDENS / f"{name}.npz") as data:
        return dict(data)


def test_configs_are_the_references():
    # SB experiments/coco/resnet50/256x192_d256x3_adam_lr1e-3.yaml,
    # HRNet experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml,
    # as the golden script read them with the releases' own config loaders.
    for config, name in ((SIMPLE_BASELINES_AUGMENT, "simple_baselines"), (HRNET_AUGMENT, "hrnet")):
        read = _golden(f"augment_stats_{name}")["config"]
        assert (config.scale_factor, config.rotation_factor, float(config.flip), config.half_body_prob) == tuple(
            read[:4]
        )
        if read[3] > 0:
            assert config.half_body_joints == read[4]
    assert MMPoseAugment().to_dict()["scale_range"] == [0.5, 1.5]
    assert ReleaseAugment().to_dict() == dataclasses.asdict(HRNET_AUGMENT)


def test_box_rules_are_the_references():
    boxes = _golden("augment_boxes")
    size = boxes["image"].shape[1::-1]
    for i, box in enumerate(boxes["boxes"]):
        for name in ("simple_baselines", "hrnet"):
            center, scale = release_center_scale(box, size, 192 / 256)
            np.testing.assert_array_equal(center, boxes[f"{name}_centers"][i])
            np.testing.assert_array_equal(scale, boxes[f"{name}_scales"][i].astype(np.float32) * np.float32(200))
        center, scale = mmpose_center_scale(box, size)
        np.testing.assert_array_equal(center, boxes["mmpose_centers"][i])
        np.testing.assert_array_equal(scale, boxes["mmpose_scales"][i])


@pytest.mark.parametrize("family", ["release", "mmpose", "udp"])
def test_reference_sample_cuts_the_references_pixels(family):
    boxes, golden = _golden("augment_boxes"), _golden(f"augment_crops_{family}")
    crop = CropConvention(tuple(int(v) for v in golden["input_size"]), centring=family)
    assert (
        golden["flips"].any() and (golden["rotations"] != 0).any()
    )  # the file covers them (half bodies: MMPose's files)
    for k in range(len(golden["crops"])):
        params = AugmentParams(
            golden["centers"][k], golden["scales"][k], float(golden["rotations"][k]), bool(golden["flips"][k])
        )
        person = boxes["keypoints"][golden["person"][k]]
        sample = reference_sample(boxes["image"], person, params, crop)
        np.testing.assert_array_equal(sample["image"], golden["crops"][k], err_msg=f"draw {k}")
        np.testing.assert_array_equal(sample["visible"], golden["visible"][k])
        labelled = golden["visible"][k] > 0
        np.testing.assert_allclose(sample["keypoints"][labelled], golden["keypoints"][k][labelled], atol=1e-4)
        # input_from_image maps the ORIGINAL image's joints (swapped when flipped) to the input.
        original = apply_affine(person[:, :2], sample["input_from_image"])
        if params.flip:
            original = original[flip_index()]
        np.testing.assert_allclose(original[labelled], sample["keypoints"][labelled], atol=1e-3)


def _ours(family: str, person: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    boxes = _golden("augment_boxes")
    box, keypoints = boxes["boxes"][person], boxes["keypoints"][person]
    width, height = boxes["image"].shape[1], boxes["image"].shape[0]
    if family == "mmpose":
        center, scale = mmpose_center_scale(box, (width, height))
        draws = [sample_mmpose(rng, keypoints, center, scale, width, MMPoseAugment(), 192 / 256) for _ in range(DRAWS)]
    else:
        config = HRNET_AUGMENT if family == "hrnet" else SIMPLE_BASELINES_AUGMENT
        center, scale = release_center_scale(box, (width, height), 192 / 256)
        draws = [sample_release(rng, keypoints, center, scale, width, config, 192 / 256) for _ in range(DRAWS)]
    values = np.array([[*d.center, *d.scale, d.rotation_deg] for d in draws])
    return {"values": values, "flip": np.array([d.flip for d in draws])}


@pytest.mark.parametrize("family", ["simple_baselines", "hrnet", "mmpose"])
def test_sampling_has_the_references_distributions(family):
    """Centre, scale and rotation: our empirical CDF at the reference's 99 quantile points within a
    two-sample Kolmogorov-Smirnov bound at the 0.1 % level; flip and rotation rates within 4 sigma."""
    golden = _golden(f"augment_stats_{family}")
    n, m = DRAWS, int(golden["person0_draws"])
    ks_bound = 1.95 * np.sqrt((n + m) / (n * m))
    rng = np.random.default_rng(0)
    for person in range(3):
        ours = _ours(family, person, rng)
        points, cdf = golden[f"person{person}_points"], golden[f"person{person}_cdf"]
        for i, name in enumerate(["center x", "center y", "scale w", "scale h", "rotation"]):
            ours_cdf = (ours["values"][:, i][None, :] <= points[i][:, None]).mean(axis=1)
            gap = np.abs(ours_cdf - cdf[i]).max()
            assert gap < ks_bound, f"{family} person {person} {name}: CDF gap {gap:.4f} > {ks_bound:.4f}"
        for ours_rate, key in (
            (ours["flip"].mean(), "flip_rate"),
            ((ours["values"][:, 4] != 0).mean(), "rotation_rate"),
        ):
            p = float(golden[f"person{person}_{key}"])
            assert abs(ours_rate - p) < 4 * np.sqrt(p * (1 - p) * (1 / n + 1 / m)) + 1e-12, (
                family,
                person,
                key,
                ours_rate,
                p,
            )


def test_half_body_rates_are_the_references():
    """Half body: how often, and how often the upper half (HRNet: randn() < 0.5, 69 %; MMPose: 0.7),
    recognised in our draws by the centre landing on the mean of a half's labelled joints."""
    boxes = _golden("augment_boxes")
    keypoints, width = boxes["keypoints"][0], boxes["image"].shape[1]
    labelled = keypoints[:, 2] > 0
    rng = np.random.default_rng(1)
    for family in ("hrnet", "mmpose"):
        golden = _golden(f"augment_stats_{family}")
        half = upper = 0
        no_shift = dataclasses.replace(MMPoseAugment(), shift_prob=0.0)
        for _ in range(HALF_BODY_DRAWS):
            if family == "hrnet":
                center, scale = release_center_scale(boxes["boxes"][0], (width, 240), 0.75)
                draw = sample_release(rng, keypoints, center, scale, width, HRNET_AUGMENT, 0.75)
            else:
                center, scale = mmpose_center_scale(boxes["boxes"][0], (width, 240))
                draw = sample_mmpose(rng, keypoints, center, scale, width, no_shift, 0.75)
            points = keypoints[:, :2].copy()
            if draw.flip:
                points[:, 0] = width - 1 - points[:, 0]
            means = [points[list(ids)][labelled[list(ids)]].mean(axis=0) for ids in (range(11), range(11, 17))]
            hit = [np.abs(draw.center - mean).max() < 1e-3 for mean in means]
            half += any(hit)
            upper += hit[0]
        n, m = HALF_BODY_DRAWS, int(golden["person0_draws"])
        p = float(golden["person0_half_rate"])
        assert abs(half / n - p) < 4 * np.sqrt(p * (1 - p) * (1 / n + 1 / m)), (family, half / n, p)
        share = float(golden["person0_upper_share"])
        assert abs(upper / half - share) < 4 * np.sqrt(share * (1 - share) * (1 / half + 1 / (p * m))), (
            family,
            upper / half,
            share,
        )
    # Person 1 has only its upper body labelled: always the upper half, in both references.
    for family in ("hrnet", "mmpose"):
        assert float(_golden(f"augment_stats_{family}")["person1_upper_share"]) == 1.0


def test_truncated_normal_is_the_standard_normal_cut_at_one():
    draws = truncated_normal(np.random.default_rng(0), 200_000)
    assert np.abs(draws).max() <= 1.0
    # Var of N(0, 1) truncated to [-1, 1]: 1 - 2 phi(1) / (2 Phi(1) - 1) = 0.29113.
    assert abs(draws.mean()) < 0.004 and abs(draws.var() - 0.29113) < 0.003


def test_release_flip_mirrors_the_centre_in_float32():
    keypoints = np.zeros((17, 3))
    center, scale = release_center_scale(np.array([10.3, 20.0, 50.0, 90.0]), (641, 480), 0.75)
    flips = [
        d
        for d in (
            sample_release(np.random.default_rng(s), keypoints, center, scale, 641, SIMPLE_BASELINES_AUGMENT, 0.75)
            for s in range(20)
        )
        if d.flip
    ]
    assert flips
    for d in flips:
        assert d.center[0] == float(np.float32(641 - np.float32(center[0]) - 1.0)) and d.center[1] == center[1]


# --------------------------------------------------------------------------------------------
# RTMPose's pixel steps (tests/data/goldens/augment_rtmpose.npz: mmdet's YOLOXHSVRandomAug, albumentations 1.3.1's
# Blur, MedianBlur and CoarseDropout, OpenCV 4.14; tools/make_augment_goldens.py --rtmpose-pixels)


@pytest.fixture(scope="module")
def rtmpose_golden():
    with np.load(GOLDENS / "augment_rtmpose.npz") as f:
        return {k: f[k] for k in f.files}


def test_rtmpose_pixel_steps_are_the_references_pixels(rtmpose_golden):
    from pose.augment import box_blur, hsv_to_rgb_opencv, median_blur, rgb_to_hsv_opencv, shift_hsv

    g = rtmpose_golden
    images = g["images"]
    assert np.array_equal(np.stack([rgb_to_hsv_opencv(i) for i in images]), g["hsv_of_images"])
    hsv_grid = np.stack(
        np.meshgrid(
            np.arange(180), np.r_[np.arange(0, 256, 5), 255], [0, 1, 2, 37, 100, 128, 199, 254, 255], indexing="ij"
        ),
        -1,
    )
    assert np.array_equal(hsv_to_rgb_opencv(hsv_grid.reshape(-1, 3)), g["rgb_of_hsv_grid"])  # 85,860 colours
    assert np.array_equal(np.stack([shift_hsv(i, (0, 0, 0)) for i in images]), g["hsv_round_trip"])
    shifted = np.stack([shift_hsv(images[i % len(images)], tuple(gains)) for i, gains in enumerate(g["hsv_gains"])])
    assert np.array_equal(shifted, g["hsv_images"]) and (g["hsv_gains"] != 0).any(0).all()
    for k in (3, 5, 7):
        assert np.array_equal(np.stack([box_blur(i, k) for i in images]), g[f"blur_{k}"]), k
        assert np.array_equal(np.stack([median_blur(i, k) for i in images]), g[f"median_{k}"]), k


def test_rtmpose_pixel_sampling_has_the_references_distributions(rtmpose_golden):
    """20,000 draws of ours against 20,000 of the references' own samplers: every gain value's, kernel's rate within
    4 sigma; hole sizes and corners within a two-sample KS bound; the steps' rates equal to the config's p."""
    from pose.augment import RTMPosePixelAugment, sample_pixel_ops

    g = rtmpose_golden
    rng = np.random.default_rng(0)
    draws = [
        sample_pixel_ops(rng, RTMPosePixelAugment(dropout_prob=1.0), (192, 256)) for _ in range(len(g["gains_draws"]))
    ]
    n = len(draws)

    def rates_agree(ours: np.ndarray, theirs: np.ndarray) -> None:
        for value in np.union1d(ours, theirs):
            p, q = (ours == value).mean(), (theirs == value).mean()
            assert abs(p - q) <= 4 * np.sqrt(max(p * (1 - p), q * (1 - q), 1 / n) * 2 / n), (value, p, q)

    gains = np.array([d.hsv_gains for d in draws])
    for channel in range(3):
        rates_agree(gains[:, channel], g["gains_draws"][:, channel].astype(np.int64))
    blurs, medians = np.array([d.blur for d in draws]), np.array([d.median for d in draws])
    rates_agree(blurs[blurs > 0], g["blur_kernels"].astype(np.int64))
    rates_agree(medians[medians > 0], g["median_kernels"].astype(np.int64))
    for rate, p in (((blurs > 0).mean(), 0.1), ((medians > 0).mean(), 0.1)):
        assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / n)
    holes = np.array([d.hole for d in draws])
    theirs = g["holes"].astype(np.int64)
    bound = 1.95 * np.sqrt(2 / n)  # two-sample KS at about 0.1 %
    for column in range(4):  # x, y, w, h
        values = np.union1d(holes[:, column], theirs[:, column])
        ours_cdf = np.searchsorted(np.sort(holes[:, column]), values, side="right") / n
        their_cdf = np.searchsorted(np.sort(theirs[:, column]), values, side="right") / len(theirs)
        assert np.abs(ours_cdf - their_cdf).max() < bound, column
    assert ((holes[:, 0] + holes[:, 2] <= 192) & (holes[:, 1] + holes[:, 3] <= 256)).all()
    half = [
        sample_pixel_ops(rng, RTMPosePixelAugment(dropout_prob=0.5), (192, 256)).hole is not None for _ in range(4000)
    ]
    assert abs(np.mean(half) - 0.5) <= 4 * np.sqrt(0.25 / 4000)


def test_pixel_ops_leave_the_keypoints_and_fill_the_hole_with_black():
    from pose.augment import PixelOps, apply_pixel_ops

    image = np.full((8, 6, 3), 200, np.uint8)
    out = apply_pixel_ops(image, PixelOps((0, 0, 0), hole=(1, 2, 3, 4)))
    assert (out[2:6, 1:4] == 0).all() and (out[:2] == 200).all() and (image == 200).all()
