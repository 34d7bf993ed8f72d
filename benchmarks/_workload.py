"""What the annotate benchmarks run on: synthetic COCO folders, untrained models saved as run
folders, and the person inputs of one image cut as the annotate job cuts them.

Untrained models need no download; a raised person logit makes the detector report persons, so
that the keypoint model has work. The figures are about speed and storage traffic, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_coco(workdir: Path, images: int, scale: int, split: str) -> tuple[Path, Path]:
    """(1x, `scale`x) synthetic COCO folders of `images` and `images * scale` images under
    `workdir`, written once and reused by later runs with the same workdir."""
    from pose.synth.people import write_coco

    small, large = workdir / "coco-1x", workdir / f"coco-{scale}x"
    print(f"synthesising {images} and {images * scale} images under {workdir} ...", flush=True)
    if not small.exists():
        write_coco(small, split=split, images=images, seed=0)
    if not large.exists():
        write_coco(large, split=split, images=images * scale, seed=0)
    return small, large


def untrained_models(folder: Path, detector_config, keypoint_recipe, person_logit: float) -> tuple[str, str]:
    """(detector, keypoint model) run folders under `folder` (`jobs.models.save_run`): untrained,
    with the detector's person logit raised to `person_logit` so that it finds persons."""
    import torch

    from jobs.models import save_run
    from pose.models.detector import build_detector
    from pose.models.keypoints import build_keypoint_model

    torch.manual_seed(0)
    detector = build_detector(detector_config)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] = person_logit
    keypoints = build_keypoint_model(keypoint_recipe.model_config())
    detector_info = {"task": "detector", "model": detector_config.to_dict()}
    keypoint_info = {
        "task": "keypoints",
        "recipe": keypoint_recipe.to_dict(),
        "model": keypoint_recipe.model_config().to_dict(),
    }
    return (
        save_run(str(folder / "detector"), detector_info, detector.state_dict()),
        save_run(str(folder / "keypoints"), keypoint_info, keypoints.state_dict()),
    )


def cut_persons(
    image: np.ndarray, found: dict, crop, threshold: float, max_persons: int
) -> tuple[np.ndarray, np.ndarray]:
    """The person inputs (P, h, w, 3) of one image's detections and their input -> image matrices
    (P, 2, 3), chosen and cut as the job does (`person_boxes`, `pose.topdown.cut_crops`)."""
    from pose.models.detector import person_boxes
    from pose.topdown import cut_crops

    chosen = person_boxes(found["boxes"], found["scores"], found["labels"], threshold, max_persons)
    inputs, image_from_input, _ = cut_crops(image, found["boxes"][chosen], crop)
    return inputs, image_from_input
