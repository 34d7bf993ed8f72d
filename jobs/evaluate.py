"""Evaluation commands: figures on a held-out split, and the pictures that go with them.

Evaluation runs in this process, reading the split's Parquet directly: the held-out splits are
small next to training, and the figures must come from one place (one evaluator over the whole
split, never an average of per-worker averages).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from jobs.storage import StorageOptions, is_s3, join, write_bytes_atomic
from jobs.ingest import read_table
from jobs.models import load_digit_model, load_keypoint_model
from jobs.train import batches_of


def _save_png(image, folder: Path | None, model_dir: str, name: str, options: StorageOptions) -> str:
    """Write a picture to `folder`, or beside the model when no folder is given."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    target = str(folder / name) if folder is not None else join(model_dir, name)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, buffer.getvalue(), options)
    return target


def evaluate_svhn(data: str, model_dir: str, split: str, options: StorageOptions, pictures: Path | None = None) -> dict:
    """Accuracy, per-class accuracy and confusion on one split; writes the confusion-matrix and
    prediction-grid PNGs. Returns the figures (and the paths of the pictures)."""
    import torch

    from pose import draw
    from pose.digit_task import DigitTask, pixels_from_rows, to_input

    model, recipe = load_digit_model(model_dir, options)
    task = DigitTask(recipe)
    rows = read_table(data, "digits", (split,), options, columns=["label", "pixels"])
    evaluator = task.evaluator()
    device = torch.device("cpu")
    for batch in batches_of(rows, 1024):
        evaluator.update(model, batch, device)
    figures = evaluator.result()

    sample = rows.slice(0, 100)
    pixels = pixels_from_rows(sample["pixels"].to_pylist())
    with torch.no_grad():
        predicted = model(to_input(torch.from_numpy(pixels))).argmax(1).numpy()
    grid = draw.digit_grid(pixels, sample["label"].to_pylist(), predicted.tolist())
    matrix = draw.confusion_matrix(np.asarray(figures["confusion"]), [str(d) for d in range(10)], title=f"SVHN {split}: accuracy {figures['accuracy']:.4f}")
    folder = pictures if pictures is not None or is_s3(model_dir) is False else None
    figures["pictures"] = [
        _save_png(matrix, folder, model_dir, f"confusion-{split}.png", options),
        _save_png(grid, folder, model_dir, f"predictions-{split}.png", options),
    ]
    return figures


def keypoint_ground_truth(data: str, split: str, options: StorageOptions) -> dict:
    """The COCO-format ground truth of one ingested split, for pycocotools."""
    from pose.keypoint_task import ground_truth_from_tables

    images = read_table(data, "images", (split,), options, columns=["image_id", "split", "file_name", "width", "height"])
    persons = read_table(data, "persons", (split,), options)
    return ground_truth_from_tables(images, persons)


def evaluate_keypoints(
    data: str,
    model_dir: str,
    split: str,
    options: StorageOptions,
    pictures: Path | None = None,
    results_file: str | None = None,
) -> dict:
    """Seed PCK and COCO keypoint AP/AR (ground-truth boxes) on one split, with flip test; writes
    the COCO results JSON when asked and a picture of inputs, true and predicted heatmaps."""
    import json

    import torch

    from pose.heatmaps import to_image_coordinates
    from pose.keypoint_task import KeypointBatchTransform, KeypointEvaluator, evaluation_figure, predict

    model, recipe = load_keypoint_model(model_dir, options)
    codec = recipe.codec()
    evaluator = KeypointEvaluator(codec, keypoint_ground_truth(data, split, options))
    transform = KeypointBatchTransform(recipe, train=False)
    first = None
    for batch in batches_of(read_table(data, "person_crops", (split,), options), 64):
        prepared = transform(batch)
        keypoints, scores, heatmaps = predict(model, prepared["image"], flip_test=recipe.flip_test, codec=codec)
        evaluator.update(heatmaps, prepared["target"], prepared["target_weight"], to_image_coordinates(keypoints, prepared["image_from_input"]), scores, prepared)
        if first is None:
            first = (prepared, keypoints, scores, heatmaps)
    figures = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in evaluator.result().items()}
    if results_file:
        write_bytes_atomic(results_file, json.dumps(evaluator.results_json()).encode(), options)
        figures["results"] = results_file
    if first is not None:
        prepared, keypoints, scores, heatmaps = first
        picture = evaluation_figure(prepared["image"], prepared["target"], heatmaps, prepared["keypoints"], keypoints, visible=prepared["target_weight"], scores=scores)
        folder = pictures if pictures is not None or not is_s3(model_dir) else None
        figures["pictures"] = [_save_png(picture, folder, model_dir, f"keypoints-{split}.png", options)]
    return figures
