import numpy as np
import pyarrow as pa

from pose import schema
from pose.crops import CropSettings, cut_person_crop, person_crop_row, square_digit_crop
from pose.geometry import apply_affine
from pose.images import decode_image


def test_person_crop_carries_keypoints_and_maps_back():
    image = np.zeros((200, 300, 3), np.uint8)
    keypoints = np.zeros((17, 3))
    keypoints[0] = (150, 40, 2)
    keypoints[15] = (140, 170, 1)
    for x, y, _ in keypoints[[0, 15]]:
        image[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
    bbox = np.array([120.0, 30.0, 60.0, 150.0])
    settings = CropSettings(width=96, height=128)
    crop = cut_person_crop(image, bbox, keypoints, settings)

    assert crop.pixels.shape == (128, 96, 3)
    for joint in (0, 15):
        x, y, v = crop.keypoints[joint]
        assert v == keypoints[joint, 2]
        assert crop.pixels[int(round(y)), int(round(x))].max() > 100  # the dot is where the keypoint says
    assert crop.keypoints[1].tolist() == [0, 0, 0]  # unlabelled joints stay (0, 0, 0)
    np.testing.assert_allclose(
        apply_affine(crop.keypoints[[0, 15], :2], crop.image_from_crop), keypoints[[0, 15], :2], atol=1e-6
    )

    # The padded, aspect-kept box fills 1 / margin of the crop, centred.
    x, y, w, h = crop.bbox
    assert abs((x + w / 2) - (96 - 1) / 2) < 1e-6 and abs((y + h / 2) - (128 - 1) / 2) < 1e-6
    assert abs(h * settings.margin * settings.padding - 128) < 1e-6


def test_person_crop_row_is_the_stored_crop_of_one_annotation():
    rows, columns = np.mgrid[0:200, 0:300]
    image = np.stack([rows, columns // 2, (rows + columns) // 3], -1).astype(np.uint8)  # smooth: JPEG keeps it
    keypoints = np.zeros(51)
    keypoints[0:3] = (150, 40, 2)
    annotation = {"id": 5, "bbox": [120, 30, 60, 150], "keypoints": keypoints.tolist()}
    settings = CropSettings(width=96, height=128)
    row = person_crop_row(image, annotation, 9, "val", settings)

    pa.Table.from_pylist([row], schema=schema.PERSON_CROPS)  # the stored layout
    expected = cut_person_crop(image, np.asarray(annotation["bbox"]), keypoints.reshape(17, 3), settings)
    assert (row["annotation_id"], row["image_id"], row["split"]) == (5, 9, "val")
    assert (row["crop_width"], row["crop_height"]) == (96, 128) and row["area"] == 60 * 150  # the box's, no area
    stored = decode_image(row["crop"])
    assert stored.shape == expected.pixels.shape
    assert np.abs(stored.astype(int) - expected.pixels.astype(int)).mean() < 2  # the JPEG round trip only
    np.testing.assert_allclose(np.asarray(row["keypoints"]).reshape(17, 3), expected.keypoints, atol=1e-4)
    np.testing.assert_allclose(row["image_from_crop"], expected.image_from_crop.reshape(-1))
    assert person_crop_row(image, {**annotation, "area": 7.5}, 9, "val", settings)["area"] == 7.5


def test_square_digit_crop_keeps_the_digit_centred():
    image = np.zeros((40, 100, 3), np.uint8)
    image[10:30, 45:55] = 255  # a 10x20 "digit" at left=45, top=10
    crop = square_digit_crop(image, (45, 10, 10, 20))
    assert crop.shape == (32, 32, 3)
    columns = np.flatnonzero(crop[16, :, 0] > 128)
    assert abs(columns.mean() - 15.5) < 1.0 and 14 <= len(columns) <= 18  # half the width of the square
    rows = np.flatnonzero(crop[:, 16, 0] > 128)
    assert len(rows) >= 30  # the digit spans the square's height
