"""Metrics: PCK on heatmaps (Simple Baselines' accuracy), OKS and OKS-NMS, COCO AP through pycocotools, and
classification accuracy.

Keypoints are `(x, y)` pixels in COCO's joint order (`pose.joints`); COCO-style arrays are
(K, 3) with the third column a visibility flag (ground truth) or a confidence (predictions).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose.joints import OKS_SIGMAS


def _argmax_joints(heatmaps: np.ndarray) -> np.ndarray:
    """Heatmaps (N, K, h, w) -> integer argmax (N, K, 2) as float32 (x, y); a map whose maximum
    is not > 0 gives (0, 0). This is Simple Baselines' `get_max_preds`."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    index = flat.argmax(-1)
    coords = np.stack([index % w, index // w], -1).astype(np.float32)
    return coords * (flat.max(-1) > 0)[..., None]


def _pck_counts(
    output_heatmaps: np.ndarray, target_heatmaps: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint (hits, valid) counts (K,) of the heatmap PCK over a batch (N, K, h, w)."""
    output_heatmaps, target_heatmaps = np.asarray(output_heatmaps), np.asarray(target_heatmaps)
    h, w = output_heatmaps.shape[2:]
    predicted, true = _argmax_joints(output_heatmaps), _argmax_joints(target_heatmaps)
    # Sic: the original divides (x, y) by (h, w) / 10, i.e. x by h / 10 and y by w / 10.
    norm = np.array([h, w]) / 10
    distances = np.linalg.norm(predicted / norm - true / norm, axis=-1)
    # Targets whose argmax is in the first two rows or columns (which includes empty targets,
    # whose argmax is set to (0, 0)) are not scored.
    valid = (true[..., 0] > 1) & (true[..., 1] > 1)
    return ((distances < threshold) & valid).sum(0), valid.sum(0)


def _pck_from_counts(hits: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float, int]:
    scored = valid > 0
    per_joint = np.where(scored, hits / np.maximum(valid, 1), -1.0)
    count = int(scored.sum())
    return per_joint, float(per_joint[scored].mean()) if count else 0.0, count


def heatmap_pck(
    output_heatmaps: np.ndarray, target_heatmaps: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, float, int]:
    """PCK on heatmaps: Simple Baselines' `lib/core/evaluate.py::accuracy`.

    output_heatmaps, target_heatmaps: (N, K, h, w). Both the prediction and the truth are the
    integer argmax of their heatmaps (not the float keypoints). A joint is correct when the
    distance between them, with x divided by h / 10 and y by w / 10, is < `threshold`; a joint
    whose target argmax has x <= 1 or y <= 1 (also an all-zero target) is skipped.

    Returns per-joint accuracy (K,) (-1 for a joint with no scored sample), the mean over joints
    with accuracy >= 0 (0 if none), and the number of those joints.
    """
    return _pck_from_counts(*_pck_counts(output_heatmaps, target_heatmaps, threshold))


class PckAccumulator:
    """`heatmap_pck` over a whole evaluation set, fed batch by batch.

    Per-joint hit and valid counts are summed over batches, and the result is computed from the
    totals, so it equals `heatmap_pck` on all samples as one batch. (Averaging per-batch results
    instead would weight small batches and rare joints wrongly.)
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.hits: np.ndarray | None = None
        self.valid: np.ndarray | None = None

    def update(self, output_heatmaps: np.ndarray, target_heatmaps: np.ndarray) -> None:
        """Add one batch of heatmaps (N, K, h, w)."""
        hits, valid = _pck_counts(output_heatmaps, target_heatmaps, self.threshold)
        self.hits = hits if self.hits is None else self.hits + hits
        self.valid = valid if self.valid is None else self.valid + valid

    def result(self) -> tuple[np.ndarray, float, int]:
        """(per-joint accuracy (K,), mean over scored joints, number of scored joints), as `heatmap_pck`."""
        if self.hits is None:
            raise ValueError("PckAccumulator.result() called before any update()")
        return _pck_from_counts(self.hits, self.valid)


def oks(predicted: np.ndarray, ground_truth: np.ndarray, area: float, sigmas: np.ndarray = OKS_SIGMAS) -> float:
    """Object keypoint similarity of one prediction (K, 3) to one ground truth (K, 3) of `area`
    (pixels²), COCO's formula: the mean over labelled joints (v > 0) of
    exp(-d² / (2 · area · (2σ)²)). The prediction's third column is ignored; 0.0 when the ground
    truth has no labelled joint."""
    predicted, ground_truth = np.asarray(predicted, np.float64), np.asarray(ground_truth, np.float64)
    labelled = ground_truth[:, 2] > 0
    if not labelled.any():
        return 0.0
    squared_distance = ((predicted[:, :2] - ground_truth[:, :2]) ** 2).sum(-1)
    similarity = np.exp(-squared_distance / (2 * (area + np.spacing(1)) * (2 * np.asarray(sigmas)) ** 2))
    return float(similarity[labelled].mean())


def oks_nms(instances: list[dict], threshold: float = 0.9, sigmas: np.ndarray = OKS_SIGMAS) -> list[int]:
    """Greedy non-maximum suppression of pose instances (dicts with "keypoints" (K, 3), "score",
    "area"): take the best-scoring remaining instance, drop every other whose OKS to it is
    > `threshold`, repeat. Returns the kept indices, best first.

    As in Simple Baselines, the OKS uses the mean of the two areas; joints the kept instance
    gives confidence 0 do not count.
    """
    remaining = [int(i) for i in np.argsort([-inst["score"] for inst in instances], kind="stable")]
    kept = []
    while remaining:
        best, *remaining = remaining
        kept.append(best)
        reference = instances[best]
        remaining = [
            i
            for i in remaining
            if oks(
                instances[i]["keypoints"],
                reference["keypoints"],
                (instances[i]["area"] + reference["area"]) / 2,
                sigmas,
            )
            <= threshold
        ]
    return kept


_KEYPOINT_STATS = ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l")
# COCO's box summary has small objects and AR at 1/10/100 detections instead of AR50/AR75;
# "ar" is AR@100, COCO's headline AR.
_BOX_STATS = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l", "ar1", "ar10", "ar", "ar_s", "ar_m", "ar_l")


def _coco_eval(
    ground_truth: dict,
    results: list[dict],
    iou_type: str,
    names: tuple[str, ...],
    image_ids,
    category_ids,
    verbose: bool,
) -> dict:
    if not results:
        return dict.fromkeys(names, 0.0)
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        # pycocotools writes into the annotation and result dicts; give it copies.
        coco_gt = COCO()
        coco_gt.dataset = {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        if category_ids is not None:
            evaluator.params.catIds = sorted(int(i) for i in category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(names, evaluator.stats)}


def coco_keypoint_ap(ground_truth: dict, results: list[dict], *, image_ids=None, verbose: bool = False) -> dict:
    """COCO keypoint AP/AR (OKS) by pycocotools' `COCOeval(iouType="keypoints")`.

    ground_truth: a COCO keypoints dataset dict (images, annotations with keypoints, num_keypoints,
    area, bbox, iscrowd; categories). results: COCO result dicts (image_id, category_id,
    keypoints as a flat list of K*3 numbers, score). `image_ids` restricts the evaluation.
    Returns {"ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l"}; COCO
    reports -1 for an area range without ground truth. No results gives all 0.0.
    """
    return _coco_eval(ground_truth, results, "keypoints", _KEYPOINT_STATS, image_ids, None, verbose)


def coco_box_ap(
    ground_truth: dict, results: list[dict], *, category_ids=None, image_ids=None, verbose: bool = False
) -> dict:
    """COCO box AP/AR by pycocotools' `COCOeval(iouType="bbox")`.

    results: COCO result dicts (image_id, category_id, bbox [x, y, w, h], score).
    `category_ids` / `image_ids` restrict the evaluation. Returns {"ap", "ap50", "ap75", "ap_s",
    "ap_m", "ap_l", "ar1", "ar10", "ar", "ar_s", "ar_m", "ar_l"} ("ar" is AR@100). No results
    gives all 0.0.
    """
    return _coco_eval(ground_truth, results, "bbox", _BOX_STATS, image_ids, category_ids, verbose)


def accuracy(
    predicted_labels: np.ndarray, true_labels: np.ndarray, num_classes: int = 10
) -> tuple[float, np.ndarray, np.ndarray]:
    """Classification accuracy of integer labels (N,) in [0, num_classes).

    Returns the overall accuracy, per-class accuracy (C,) (recall; NaN for a class absent from
    `true_labels`), and the confusion matrix (C, C) of counts, rows = true, columns = predicted.
    """
    predicted = np.asarray(predicted_labels, np.int64).ravel()
    true = np.asarray(true_labels, np.int64).ravel()
    confusion = np.bincount(true * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
    correct, per_class_total = np.diag(confusion), confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = correct / per_class_total
    overall = float(correct.sum() / true.size) if true.size else 0.0
    return overall, per_class, confusion
