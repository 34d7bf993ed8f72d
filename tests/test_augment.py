import dataclasses

import numpy as np
import pytest
import torch

from pose.augment import AugmentConfig, jitter_colors, normalize, topdown_sample
from pose.geometry import apply_affine, box_to_center_size
from pose.joints import JOINT_NAMES, NUM_JOINTS, flip_index

CROP_W, CROP_H = 288, 384  # the person_crops size
LEFT_WRIST, RIGHT_WRIST = JOINT_NAMES.index("left_wrist"), JOINT_NAMES.index("right_wrist")
GEOMETRY_ONLY = AugmentConfig(color_jitter=0.0)


def standing_person() -> tuple[np.ndarray, np.ndarray]:
    """A person box in the middle of the crop and 17 labelled joints (v = 2) at integer pixels,
    the upper body in its top half, the lower body in its bottom half, left joints on image right."""
    bbox = np.array([94.0, 92.0, 100.0, 200.0])
    # Each joint: (x offset from the box centre, y from the box top); left joints at +x.
    layout = [(0, 10), (6, 5), (-6, 5), (12, 8), (-12, 8), (25, 40), (-25, 40), (35, 70), (-35, 70),
              (40, 95), (-40, 95), (15, 100), (-15, 100), (18, 150), (-18, 150), (20, 195), (-20, 195)]
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
        AugmentConfig(rotation_prob=0.0, scale=0.0, half_body_prob=0.0, flip=False, color_jitter=0.0),  # evaluation geometry through the rng path
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
            sample = topdown_sample(dot_image(*keypoints[joint, :2]), bbox, keypoints, np.random.default_rng(seed), config)
            flipped = np.linalg.det(sample["input_from_crop"][:, :2]) < 0
            seen_flip |= flipped
            # After a flip the dot drawn at joint j is the mirrored joint: keypoints[flip_index()[j]].
            slot = flip_index()[joint] if flipped else joint
            if sample["visible"][slot] == 0:
                continue
            np.testing.assert_allclose(dot_position(sample["image"]), sample["keypoints"][slot], atol=1.0, err_msg=f"seed {seed} joint {joint}")
    assert seen_flip == config.flip


def test_flip_swaps_left_and_right_joints():
    bbox, keypoints = standing_person()
    config = AugmentConfig(rotation_prob=0.0, scale=0.0, half_body_prob=0.0, color_jitter=0.0)
    crop = dot_image(*keypoints[LEFT_WRIST, :2])
    flipped = next(
        sample
        for seed in range(50)
        if np.linalg.det((sample := topdown_sample(crop, bbox, keypoints, np.random.default_rng(seed), config))["input_from_crop"][:, :2]) < 0
    )
    plain = topdown_sample(crop, bbox, keypoints, rng=None)
    # The person's left wrist is on image right (x > centre); mirrored, it is on the left and,
    # looking like a right wrist, is labelled right_wrist.
    assert plain["keypoints"][LEFT_WRIST, 0] > 96 and flipped["keypoints"][RIGHT_WRIST, 0] < 96
    np.testing.assert_allclose(flipped["keypoints"][RIGHT_WRIST], [191 - plain["keypoints"][LEFT_WRIST, 0], plain["keypoints"][LEFT_WRIST, 1]], atol=1e-4)
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
    zoomed = topdown_sample(np.zeros((CROP_H, CROP_W, 3), np.uint8), bbox, standing_person()[1], rng=None, config=AugmentConfig(padding=0.6))
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
