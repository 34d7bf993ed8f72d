"""Where the person boxes of a top-down keypoint evaluation come from when they are not the ground
truth's: a COCO box results file, or a detector run over the split."""

from __future__ import annotations

import json

from jobs.storage import StorageOptions, read_bytes
from pose.errors import UserError


class BoxesFileError(UserError):
    """A --boxes file that is not a COCO box results list."""


def given_person_boxes(
    data: str,
    split: str,
    options: StorageOptions,
    *,
    boxes: str | None = None,
    detector: str | None = None,
    detector_arch: str | None = None,
) -> tuple[dict | None, dict]:
    """Person boxes per image id (`jobs.annotate.boxes_by_image`) from the COCO box results file
    `boxes`, or from `detector` (a train-detector run folder or a .pth file, `detector_arch` naming
    a bare file's architecture) run over `split` of the ingested COCO `data`; None for neither (the
    ground truth's boxes). Also the detector's box AP, AP50 and AR as {"box_ap", ...} ({} for a file)."""
    from jobs.annotate import boxes_by_image

    if boxes:
        return boxes_by_image(read_box_results(boxes, options)), {}
    if detector:
        from jobs.evaluate import detect_split
        from jobs.models import load_detector

        found, _ = detect_split(load_detector(detector, options, detector_arch), data, split, options)
        figures = {f"box_{k}": v for k, v in found.result().items() if k in ("ap", "ap50", "ar")}
        return boxes_by_image(found.results), figures
    return None, {}


def read_box_results(url: str, options: StorageOptions) -> list[dict]:
    """A COCO box results file: a JSON list of {image_id, category_id, bbox, score}."""
    try:
        entries = json.loads(read_bytes(url, options))
    except ValueError:
        raise BoxesFileError(f"{url}: not a JSON file") from None
    if not isinstance(entries, list) or not all(
        isinstance(r, dict) and {"image_id", "bbox"} <= set(r) for r in entries
    ):
        raise BoxesFileError(f"{url}: expected a COCO box results list [{{image_id, category_id, bbox, score}}, ...]")
    return entries
