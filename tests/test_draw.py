"""Pictures of pose/draw.py: sizes, and pixels where things are (and are not) drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pose import draw
from pose.joints import JOINT_NAMES, NUM_JOINTS, SKELETON

GREY = (120, 120, 120)


def grey_image(height: int = 200, width: int = 200) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def person(joints: dict[str, tuple[float, float, float]]) -> np.ndarray:
    """(17, 3) keypoints, all unlabelled (v = 0) except `joints`: name -> (x, y, v)."""
    keypoints = np.zeros((NUM_JOINTS, 3))
    for name, row in joints.items():
        keypoints[JOINT_NAMES.index(name)] = row
    return keypoints


def pixel(picture: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(picture)[y, x])


def window(picture: Image.Image, x: int, y: int, half: int) -> np.ndarray:
    return np.asarray(picture)[y - half : y + half + 1, x - half : x + half + 1]


def test_font_is_dejavu_sans() -> None:
    assert draw._font(12).path.endswith("DejaVuSans.ttf")


def test_draw_persons_returns_rgb_copy_of_same_size() -> None:
    image = grey_image(120, 160)
    keypoints = person({"left_wrist": (50, 50, 2)})[None]
    picture = draw.draw_persons(image, np.array([[20, 20, 100, 80]]), keypoints)
    assert picture.mode == "RGB" and picture.size == (160, 120)
    assert (image == GREY).all()  # the caller's array is untouched


def test_visible_occluded_and_unlabelled_joints() -> None:
    keypoints = person({"left_wrist": (50, 50, 2), "right_wrist": (150, 50, 1), "nose": (100, 150, 0)})
    picture = draw.draw_persons(grey_image(), np.array([[10, 10, 180, 180]]), keypoints[None])
    radius = draw._person_style(180, (200, 200)).joint_radius

    assert pixel(picture, 50, 50) == draw.LEFT_COLOUR  # visible: a filled dot
    ring = window(picture, 150, 50, radius)
    assert pixel(picture, 150, 50) == GREY  # occluded: hollow ...
    assert (ring == draw.RIGHT_COLOUR).all(axis=-1).any()  # ... ring around it
    assert (window(picture, 100, 150, radius + 2) == GREY).all()  # unlabelled: nothing


def test_occluded_joint_stays_hollow_where_a_limb_ends() -> None:
    keypoints = person({"left_elbow": (100, 40, 2), "left_wrist": (100, 160, 1)})
    picture = draw.draw_persons(grey_image(), np.array([[10, 10, 180, 180]]), keypoints[None])
    assert pixel(picture, 100, 160) == GREY
    # Dashed: along the limb some pixels are limb-coloured and some are background.
    column = np.asarray(picture)[50:150, 100]
    assert (column == draw.LEFT_COLOUR).all(axis=-1).any() and (column == GREY).all(axis=-1).any()


def test_left_right_and_centre_limbs_have_distinct_colours() -> None:
    keypoints = person(
        {
            "left_shoulder": (140, 40, 2),
            "left_elbow": (140, 160, 2),
            "right_shoulder": (60, 40, 2),
            "right_elbow": (60, 160, 2),
        }
    )
    picture = draw.draw_persons(grey_image(), np.array([[10, 10, 180, 180]]), keypoints[None])
    assert pixel(picture, 140, 100) == draw.LEFT_COLOUR
    assert pixel(picture, 60, 100) == draw.RIGHT_COLOUR
    assert pixel(picture, 100, 40) == draw.CENTRE_COLOUR  # the shoulder line
    assert len({draw.LEFT_COLOUR, draw.RIGHT_COLOUR, draw.CENTRE_COLOUR, draw.PERSON_BOX_COLOUR}) == 4


def test_limb_sides_follow_joint_names() -> None:
    colour = dict(zip(SKELETON, draw.LIMB_COLOURS))
    index = JOINT_NAMES.index
    assert colour[(index("left_hip"), index("right_hip"))] == draw.CENTRE_COLOUR
    assert colour[(index("nose"), index("left_eye"))] == draw.LEFT_COLOUR
    assert colour[(index("right_knee"), index("right_hip"))] == draw.RIGHT_COLOUR


def test_confidences_need_visibility_false() -> None:
    keypoints = person({"left_wrist": (50, 50, 0.9), "right_wrist": (150, 50, 0.3)})[None]
    boxes = np.array([[10, 10, 180, 180]])
    with pytest.raises(ValueError, match="visibility=False"):
        draw.draw_persons(grey_image(), boxes, keypoints)
    picture = draw.draw_persons(grey_image(), boxes, keypoints, visibility=False, min_confidence=0.5)
    assert pixel(picture, 50, 50) == draw.LEFT_COLOUR
    assert (window(picture, 150, 50, 4) == GREY).all()


def test_person_box_on_its_edges_only() -> None:
    picture = draw.draw_persons(grey_image(), np.array([[40, 30, 100, 80]]), labels=["person"], scores=[0.93])
    assert pixel(picture, 40, 70) == draw.PERSON_BOX_COLOUR  # left edge
    assert pixel(picture, 139, 70) == draw.PERSON_BOX_COLOUR  # right edge: x + w - 1
    assert pixel(picture, 90, 109) == draw.PERSON_BOX_COLOUR  # bottom edge: y + h - 1
    assert pixel(picture, 90, 70) == GREY  # interior
    assert pixel(picture, 150, 70) == GREY  # outside
    above = np.asarray(picture)[:30, 40:140]
    assert (above != GREY).any(axis=-1).mean() > 0.05  # the label sits above the box


def test_draw_detections_colours_classes_apart() -> None:
    boxes = np.array([[20, 40, 60, 60], [110, 40, 60, 60]])
    picture = draw.draw_detections(grey_image(), boxes, ["person", "bicycle"], [0.98, 0.85])
    left_edge, other_left_edge = pixel(picture, 20, 90), pixel(picture, 110, 90)
    assert left_edge != GREY and other_left_edge != GREY and left_edge != other_left_edge
    assert pixel(picture, 50, 90) == GREY


def test_crop_panel_and_side_by_side_sizes() -> None:
    crop = grey_image(64, 32)
    keypoints = person({"left_wrist": (16, 32, 2)})
    panel = draw.crop_panel(crop, keypoints)
    assert panel.size == (128, 256)
    assert pixel(panel, 64, 128) == draw.LEFT_COLOUR  # keypoints scaled with the crop
    titled = draw.crop_panel(crop, keypoints, title="ground truth")
    assert titled.height > 256

    row = draw.side_by_side([panel, Image.new("RGB", (50, 100), GREY)], height=200, gap=8)
    assert row.size == (8 + 100 + 8 + 100 + 8, 200 + 2 * 8)
    assert draw.side_by_side([panel, panel], titles=["a", "b"], height=200).height > 216


def test_digit_grid_tiles_and_right_wrong_colours() -> None:
    count, scale = 23, 3
    colours = [(10 * i + 5, 100, 200) for i in range(count)]
    pixels = np.array([np.full((32, 32, 3), c, np.uint8) for c in colours])
    labels = list(range(count))
    predicted = [label if label != 7 else 3 for label in labels]
    picture = np.asarray(
        draw.digit_grid(pixels, [v % 10 for v in labels], [v % 10 for v in predicted], cols=10, scale=scale)
    )
    corners = []
    for colour in colours:
        ys, xs = np.nonzero((picture == colour).all(axis=-1))
        assert len(ys) == (32 * scale) ** 2  # one whole tile, upscaled
        assert xs.max() - xs.min() + 1 == 32 * scale and ys.max() - ys.min() + 1 == 32 * scale
        corners.append((xs.min(), ys.min()))
    assert corners[10][0] == corners[0][0] and corners[10][1] > corners[0][1]  # 10 columns
    assert corners[20][1] > corners[10][1]  # 3 rows
    x, y = corners[7]
    assert tuple(picture[y, x - 1]) == draw.WRONG_ANSWER_COLOUR
    x, y = corners[8]
    assert tuple(picture[y, x - 1]) == draw.RIGHT_ANSWER_COLOUR


def test_digit_grid_without_predictions_has_no_frames() -> None:
    pixels = np.full((4, 32, 32, 3), 60, np.uint8)
    picture = np.asarray(draw.digit_grid(pixels, [1, 2, 3, 4], cols=2, scale=1))
    assert not (picture == draw.WRONG_ANSWER_COLOUR).all(axis=-1).any()
    assert not (picture == draw.RIGHT_ANSWER_COLOUR).all(axis=-1).any()


def test_number_panel_upscales_and_boxes_digits() -> None:
    image = grey_image(32, 64)
    picture = draw.number_panel(image, [(10, 4, 16, 24), (30, 4, 16, 24)], [1, 10])
    factor = 192 / 32
    assert picture.height > 192 and picture.width == 64 * factor
    band = picture.height - 192
    assert pixel(picture, round(10 * factor), band + 100) == draw.PALETTE[0]  # first box's left edge
    assert pixel(picture, round(30 * factor), band + 100) == draw.PALETTE[1]


def test_heatmap_overlay_hot_where_the_heatmap_peaks() -> None:
    heatmaps = np.zeros((3, 16, 20), np.float32)
    heatmaps[1, 5, 12] = 1.0  # stride 4: image pixels x 48..51, y 20..23
    picture = draw.heatmap_overlay(grey_image(64, 80), heatmaps, alpha=0.5)
    assert picture.size == (80, 64)
    rgb = np.asarray(picture).astype(int)
    hottest = np.unravel_index(np.argmax(rgb[..., 0] - rgb[..., 2]), rgb.shape[:2])
    assert abs(hottest[0] - 21.5) <= 2 and abs(hottest[1] - 49.5) <= 2
    assert rgb[2, 2, 2] > rgb[2, 2, 0]  # cold: the blue end of the colormap


def test_training_curves_draws_a_figure() -> None:
    metrics = [{"epoch": e, "loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 1 - 0.5 / e} for e in range(1, 6)]
    picture = draw.training_curves(metrics, ["loss", "val_accuracy"], title="test")
    assert picture.mode == "RGB" and picture.width > picture.height > 150
    rgb = np.asarray(picture)
    assert (rgb < 200).any(axis=-1).mean() > 0.01  # axes, text and lines, not a blank page
    with pytest.raises(ValueError, match="available"):
        draw.training_curves(metrics, ["bleu"])
