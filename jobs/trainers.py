"""One function per model that builds its task from a recipe and trains it on Ray
(`jobs.train.run_training`): the `train-*` commands and `pose-jobs demo` call these, so both run
the same code. Each returns the run's model.json content."""

from __future__ import annotations

import functools

from jobs.train import TrainSettings, run_training
from pose.errors import UserError


class WeightsFileError(UserError):
    """A weights file that does not fit the recipe's network (the message names the file)."""


def train_digit_model(recipe, settings: TrainSettings, *, address: str | None = None, verbose: bool = False) -> dict:
    """Train the SVHN digit classifier of `recipe` (`pose.digit_task.DigitRecipe`) on `settings.data`."""
    from pose.digit_task import DigitTask

    return run_training(DigitTask(recipe), settings, recipe.epochs, address=address, verbose=verbose)


def train_keypoint_model(
    recipe,
    settings: TrainSettings,
    *,
    backbone_weights: str | None = None,
    init_weights: str | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> dict:
    """Train the top-down keypoint model of `recipe` (`pose.keypoint_task.KeypointRecipe`), scored
    on the val split. `backbone_weights`: ImageNet weights for the backbone; `init_weights`: a
    published keypoint file of the same network to start from (local or s3://; read here once).

    The reference recipes (framework other than "pose-jobs") warp the original images, as their
    references do, so their rows travel with the image bytes."""
    from jobs.detector_data import image_sources, rows_with_images
    from jobs.evaluate import keypoint_ground_truth
    from jobs.storage import read_bytes
    from pose.keypoint_task import KeypointTask

    options = settings.options
    weights = read_bytes(backbone_weights, options) if backbone_weights else None
    initial = (init_weights, read_bytes(init_weights, options)) if init_weights else None
    task = KeypointTask(
        recipe,
        ground_truth=keypoint_ground_truth(settings.data, "val", options),
        seed=settings.seed,
        backbone_weights=weights,
        init_weights=initial,
    )
    if weights is not None or initial is not None:
        _check_weights(task, init_weights or backbone_weights)
    prepare = None
    if recipe.framework != "pose-jobs":
        sources = image_sources(settings.data, ("train", "val"), options)
        prepare = functools.partial(rows_with_images, sources=sources, options=options)
    return run_training(task, settings, recipe.epochs, address=address, verbose=verbose, prepare_rows=prepare)


def train_person_detector(
    recipe,
    settings: TrainSettings,
    *,
    init_weights: str | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> dict:
    """Train the person detector of `recipe` (`pose.detector_task.DetectorRecipe`, e.g. from
    `pose.recipes.detector_recipe`); `init_weights`: torchvision's COCO weights for its
    architecture (local or s3://) to fine-tune from."""
    from jobs.detector_data import detector_rows, person_boxes_by_image
    from jobs.evaluate import keypoint_ground_truth
    from jobs.storage import read_bytes
    from pose.detector_task import DetectorTask

    options = settings.options
    weights = read_bytes(init_weights, options) if init_weights else None
    task = DetectorTask(
        recipe,
        ground_truth=keypoint_ground_truth(settings.data, "val", options),
        seed=settings.seed,
        init_weights=weights,
    )
    if weights is not None:
        _check_weights(task, init_weights)
    boxes = person_boxes_by_image(settings.data, (*task.train_splits, task.val_split), options)
    prepare = functools.partial(detector_rows, boxes=boxes, options=options)
    return run_training(task, settings, recipe.epochs, address=address, verbose=verbose, prepare_rows=prepare)


def _check_weights(task, path: str) -> None:
    """Build the model once here: a wrong file is one clear line now, not a worker's traceback later."""
    try:
        task.build_model()
    except ValueError as error:
        message = str(error)
        raise WeightsFileError(message if path in message else f"{path}: {message}") from None
