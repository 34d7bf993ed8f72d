"""pose/detector_task.py: the recipe, the flip and zoom of an image with its boxes, training inputs
and one step of the task, and the COCO box evaluator."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pose.detector_task import (
    SCRATCH_DETECTOR,
    DetectorEvaluator,
    DetectorRecipe,
    DetectorTask,
    augment,
    horizontal_flip,
    zoom,
)
from pose.images import encode_png

TINY = replace(
    SCRATCH_DETECTOR,
    min_size=96,
    max_size=128,
    train_proposals_per_image=50,
    box_samples_per_image=16,
    proposals_per_image=20,
)
RED = (230, 20, 20)


def scene(boxes, size=(90, 120)) -> np.ndarray:
    """Grey (H, W) = size image with a red rectangle for each COCO box [x, y, w, h] (integers)."""
    image = np.full((*size, 3), 90, np.uint8)
    for x, y, w, h in boxes:
        image[y : y + h, x : x + w] = RED
    return image


def red_pixels_box(image: np.ndarray) -> list[float]:
    """The tight COCO box of the red pixels."""
    rows, cols = np.nonzero((image == RED).all(axis=2))
    return [
        float(cols.min()),
        float(rows.min()),
        float(cols.max() + 1 - cols.min()),
        float(rows.max() + 1 - rows.min()),
    ]


def test_flip_moves_each_box_with_its_pixels():
    image = scene([(10, 20, 30, 40)])
    flipped, boxes = horizontal_flip(image, np.array([[10.0, 20, 30, 40]]))
    assert boxes.tolist() == [[120 - 40, 20, 30, 40]]
    assert red_pixels_box(flipped) == boxes[0].tolist()
    again, boxes_again = horizontal_flip(flipped, boxes)
    np.testing.assert_array_equal(again, image)
    assert boxes_again.tolist() == [[10, 20, 30, 40]]


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.5])
def test_zoom_keeps_boxes_on_their_pixels_and_scales_them(scale):
    image = scene([(40, 30, 24, 30)])
    rng = np.random.default_rng(1)
    zoomed, boxes = zoom(image, np.array([[40.0, 30, 24, 30]]), scale, rng)
    height, width = zoomed.shape[:2]
    assert (width, height) == (round(120 / scale), round(90 / scale))
    assert red_pixels_box(zoomed) == pytest.approx(boxes[0].tolist())
    # once resized back to the original size, the box is `scale` times as large
    assert boxes[0, 2] * 120 / width == pytest.approx(24 * scale, rel=0.05)


def test_zoom_in_clips_boxes_to_the_window_and_keeps_what_shows():
    image = scene([(0, 0, 30, 30), (90, 60, 30, 30)])
    zoomed, boxes = zoom(image, np.array([[0.0, 0, 30, 30], [90, 60, 30, 30]]), 2.0, np.random.default_rng(0))
    assert zoomed.shape[:2] == (45, 60)
    assert (
        (boxes[:, :2] >= 0).all()
        and (boxes[:, 0] + boxes[:, 2] <= 60).all()
        and (boxes[:, 1] + boxes[:, 3] <= 45).all()
    )
    shown = boxes[(boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)]
    assert len(shown) >= 1
    for box in shown:  # what remains of a rectangle is all red
        x, y, w, h = box.astype(int)
        assert (zoomed[y : y + h, x : x + w] == RED).all()


def test_augment_is_reproducible_from_its_rng():
    recipe = DetectorRecipe(model=TINY, flip=0.5, scale_range=(0.7, 1.4))
    image, boxes = scene([(10, 20, 30, 40)]), np.array([[10.0, 20, 30, 40]])
    first = augment(image, boxes, recipe, np.random.default_rng([0, 1, 7]))
    second = augment(image, boxes, recipe, np.random.default_rng([0, 1, 7]))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert red_pixels_box(first[0]) == pytest.approx(first[1][0].tolist())


def test_recipe_round_trips_and_names_its_starts():
    recipe = DetectorRecipe.from_scratch("fasterrcnn_resnet50_fpn", epochs=3)
    assert recipe.model.norm == "batch" and recipe.model.trainable_backbone_layers == 5 and recipe.epochs == 3
    assert DetectorRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    tune = DetectorRecipe.fine_tune()
    assert tune.model.norm == "frozen" and tune.model.trainable_backbone_layers == 3 and tune.optimizer == "sgd"
    with pytest.raises(ValueError, match="2 classes"):
        DetectorRecipe(model=replace(TINY, num_classes=91))


def rows_of(images, boxes, iscrowd) -> dict:
    """A batch of detector rows, as `jobs.detector_data` gives them."""
    return {
        "image_id": np.arange(len(images)) + 1,
        "image": [encode_png(image) for image in images],
        "boxes": [np.asarray(b, np.float32).reshape(-1) for b in boxes],
        "iscrowd": [np.asarray(c, bool) for c in iscrowd],
    }


def test_one_training_step_of_the_task():
    boxes = [[(10, 20, 30, 40)], [(50, 10, 40, 60), (0, 0, 20, 20)]]
    batch = rows_of([scene(b) for b in boxes], boxes, [[False], [False, True]])
    task = DetectorTask(DetectorRecipe(model=TINY, batch_size=2, warmup_steps=0, lr=1e-3), seed=3)
    torch.manual_seed(0)
    model = task.build_model()
    inputs = task.device_inputs(task.prepare_batch(batch, 0), torch.device("cpu"))
    assert [len(t["boxes"]) for t in inputs["targets"]] == [1, 1]  # the crowd box is no target
    for image, target in zip(inputs["images"], inputs["targets"]):
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
        x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
        red = torch.tensor(RED, dtype=torch.float32) / 255
        assert torch.allclose(image[:, y1:y2, x1:x2].mean((1, 2)), red, atol=1e-3)  # boxes moved with their pixels
    again = task.device_inputs(task.prepare_batch(batch, 0), torch.device("cpu"))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(inputs["targets"], again["targets"]))
    optimizer, scheduler = task.build_optimizer(model, steps_per_epoch=1)
    model.train()
    loss = task.loss(model, inputs)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_evaluator_gives_box_ap_1_for_the_true_boxes_and_ignores_crowds():
    ground_truth = {
        "images": [{"id": 1, "width": 120, "height": 90}, {"id": 2, "width": 120, "height": 90}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 10, 40, 60], "area": 2400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    evaluator = DetectorEvaluator(ground_truth)
    found = [
        {
            "boxes": np.array([[10, 20, 30, 40]], np.float32),
            "scores": np.array([0.9], np.float32),
            "labels": np.array([1]),
        },
        # a box on the crowd is ignored, a label that is not a person is left out
        {
            "boxes": np.array([[50, 10, 40, 60], [1, 1, 18, 18], [60, 60, 10, 10]], np.float32),
            "scores": np.array([0.8, 0.7, 0.95], np.float32),
            "labels": np.array([1, 1, 3]),
        },
    ]
    evaluator.add([1, 2], found)
    figures = evaluator.result()
    assert figures["ap"] == pytest.approx(1.0) and figures["ap50"] == pytest.approx(1.0)
    assert figures["images"] == 2 and figures["detections"] == 3
    assert set(DetectorEvaluator(ground_truth, headline=True).result()) == {"ap", "ap50", "ap75", "ar"}
