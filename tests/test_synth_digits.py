"""The synthetic street numbers: shapes, labels, determinism, boxes, and files in SVHN's formats."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from pose.formats import svhn
from pose.synth import digits


def test_make_cropped_shapes_and_labels():
    pixels, labels = digits.make_cropped(np.random.default_rng(0), 700)
    assert pixels.shape == (700, 32, 32, 3) and pixels.dtype == np.uint8
    assert labels.shape == (700,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(1, 11))  # all ten digits, 0 as 10
    assert np.bincount(labels).max() < 0.2 * len(labels)
    assert 20 < pixels.std() and pixels.min() < 30 and pixels.max() > 225  # not flat, full range
    assert pixels.reshape(700, -1).std(axis=1).min() > 3  # no blank crops


def test_make_cropped_is_deterministic():
    first = digits.make_cropped(np.random.default_rng(7), 50)
    again = digits.make_cropped(np.random.default_rng(7), 50)
    other = digits.make_cropped(np.random.default_rng(8), 50)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_crop_centre_is_the_labelled_digit():
    # Every digit of a number gives one crop, in order, so the labels spell the numbers out;
    # re-rendering with the same generator state reproduces the first number's digits.
    rng = np.random.default_rng(3)
    number = digits.random_number(np.random.default_rng(3))
    _, labels = digits.make_cropped(rng, len(number))
    assert [svhn.digit_from_label(label) for label in labels] == [int(d) for d in number]


def test_render_number_boxes_lie_inside_the_image():
    rng = np.random.default_rng(1)
    heights = []
    for _ in range(40):
        number = digits.random_number(rng)
        image, boxes = digits.render_number(rng, number)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        assert len(boxes) == len(number) and 1 <= len(number) <= 5 and number[0] != "0"
        height, width = image.shape[:2]
        heights.append(height)
        for left, top, box_width, box_height in boxes:
            assert 0 <= left and 0 <= top and left + box_width <= width and top + box_height <= height
            assert box_width > 1 and box_height > 1
        lefts = [box[0] for box in boxes]
        assert lefts == sorted(lefts)  # digits read left to right
    assert min(heights) >= 20 and max(heights) <= 400 and np.median(heights) > 40


def test_render_number_digit_height_and_validation():
    image, boxes = digits.render_number(np.random.default_rng(2), "407", digit_height=50)
    assert all(40 < box_height < 75 for _, _, _, box_height in boxes)  # rotation and tilt vary it
    for bad in ("", "12a", "٣"):
        with pytest.raises(ValueError):
            digits.render_number(np.random.default_rng(0), bad)


def test_write_svhn_cropped_files_load(tmp_path):
    summary = digits.write_svhn(tmp_path, "cropped", seed=5, train=120, test=40, extra=30)
    assert summary["files"] == ["train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"]
    assert summary["counts"] == {"train": 120, "test": 40, "extra": 30}
    loaded = scipy.io.loadmat(tmp_path / "test_32x32.mat")
    assert loaded["X"].shape == (32, 32, 3, 40) and loaded["X"].dtype == np.uint8
    assert loaded["y"].shape == (40, 1) and set(loaded["y"].ravel()) <= set(range(1, 11))
    with open(tmp_path / "test_32x32.mat", "rb") as file:
        np.testing.assert_array_equal(svhn.read_cropped_labels(file), loaded["y"].ravel())
    # Each split has its own random stream: a different test count leaves train unchanged.
    digits.write_svhn(tmp_path / "again", "cropped", seed=5, train=120, test=10)
    assert (tmp_path / "again" / "train_32x32.mat").read_bytes()[128:] == (tmp_path / "train_32x32.mat").read_bytes()[
        128:
    ]
    assert not (tmp_path / "again" / "extra_32x32.mat").exists()


def test_write_svhn_full_files_load(tmp_path):
    summary = digits.write_svhn(tmp_path, "full", seed=2, train=12, test=4)
    assert summary["counts"] == {"train": 12, "test": 4}
    assert summary["files"] == ["train/digitStruct.mat", "test/digitStruct.mat"]
    assert sorted(path.name for path in (tmp_path / "test").iterdir()) == [
        "1.png",
        "2.png",
        "3.png",
        "4.png",
        "digitStruct.mat",
    ]
    with h5py.File(tmp_path / "train" / "digitStruct.mat", "r") as f:
        assert f["digitStruct/name"].shape == (12, 1)
    numbers = svhn.read_digit_struct(tmp_path / "train" / "digitStruct.mat")
    assert [number.name for number in numbers] == [f"{i}.png" for i in range(1, 13)]
    assert sum(len(number.boxes) for number in numbers) == summary["digits"]["train"]
    for number in numbers:
        with Image.open(tmp_path / "train" / number.name) as image:
            assert image.mode == "RGB"
            width, height = image.size
        for box in number.boxes:
            assert 1 <= box.label <= 10 and box.left == int(box.left)  # whole pixels, as SVHN
            assert -1 <= box.left and box.left + box.width <= width + 1
            assert -1 <= box.top and box.top + box.height <= height + 1
    with pytest.raises(ValueError, match="format"):
        digits.write_svhn(tmp_path, "mnist")
