"""The detector jobs end to end on tiny data on the S3 test server: train-detector on two workers
reading the images from S3, eval-detector (figures, results, picture), and eval-keypoints scored
from given boxes (the true boxes give exactly the ground-truth-box figures) or from a detector."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from jobs.datasets import read_image_source, read_table
from jobs.ingest import ingest
from jobs.models import save_run
from jobs.storage import filesystem, write_bytes_atomic
from pose.detector_task import SCRATCH_DETECTOR, DetectorRecipe, DetectorTask
from pose.keypoint_task import KeypointRecipe, KeypointTask
from pose.synth.people import write_coco

TINY_DETECTOR = replace(SCRATCH_DETECTOR, min_size=96, max_size=128, detections_per_image=5)


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    executable = str(Path(sys.executable).with_name("pose-jobs"))
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def coco_on_s3(ray_cluster, s3, tmp_path_factory) -> str:
    """Synthetic COCO uploaded to S3 and ingested there: `images.source` holds s3:// URLs."""
    root = tmp_path_factory.mktemp("coco")
    write_coco(root / "src", split="train", images=8, seed=31)
    write_coco(root / "src", split="val", images=3, seed=32)
    src = s3.make_bucket("detector-src") + "/coco"
    fs, prefix = filesystem(src, s3.options)
    for path in sorted((root / "src").rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{prefix}/{path.relative_to(root / 'src').as_posix()}", path.read_bytes())
    dest = s3.make_bucket("detector-data") + "/coco"
    ingest("coco", src, dest, s3.options, progress=False)
    return dest


@pytest.fixture(scope="module")
def keypoint_run(tmp_path_factory) -> str:
    task = KeypointTask(KeypointRecipe(backbone="resnet18", deconv_channels=32))
    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("keypoints") / "run")
    return save_run(folder, {**task.config(), "epochs": 1}, task.build_model().state_dict())


def test_train_and_evaluate_detector(coco_on_s3, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train-detector",
        "--data",
        coco_on_s3,
        "--out",
        str(out),
        "--workers",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--min-size",
        "96",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["task"] == "detector" and info["model"]["norm"] == "batch" and info["model"]["min_size"] == 96
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["loss"] > 0 and {"val_ap", "val_ap50", "val_ap75", "val_ar"} <= set(metrics)

    results_file = tmp_path / "boxes.json"
    result = run_cli(
        "eval-detector",
        "--data",
        coco_on_s3,
        "--model",
        str(out),
        "--json",
        "--results",
        str(results_file),
        "--pictures",
        str(tmp_path / "pictures"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["images"] == 3 and 0 <= figures["ap50"] <= 1 and 0 <= figures["ar"] <= 1
    assert isinstance(json.loads(results_file.read_text()), list)
    assert [Path(p).name for p in figures["pictures"]] == ["detections-val.png"] and Path(
        figures["pictures"][0]
    ).exists()

    wrong = run_cli("eval-detector", "--data", coco_on_s3, "--model", str(tmp_path / "nothing"))
    assert (
        wrong.returncode == 2
        and "neither a trained detector folder" in wrong.stderr
        and len(wrong.stderr.strip().splitlines()) == 1
    )


def test_keypoints_scored_from_the_true_boxes_equal_the_ground_truth_scoring(coco_on_s3, s3, keypoint_run, tmp_path):
    crops = read_table(coco_on_s3, "person_crops", ("val",), s3.options, columns=["annotation_id"])
    persons = read_table(coco_on_s3, "persons", ("val",), s3.options).to_pylist()
    with_crops = set(crops["annotation_id"].to_pylist())
    boxes = [
        {"image_id": p["image_id"], "category_id": 1, "bbox": p["bbox"], "score": 1.0}
        for p in persons
        if p["annotation_id"] in with_crops
    ]
    boxes_url = s3.make_bucket("detector-boxes") + "/true-boxes.json"
    write_bytes_atomic(boxes_url, json.dumps(boxes).encode(), s3.options)

    common = ["eval-keypoints", "--data", coco_on_s3, "--model", keypoint_run, "--json"]
    truth = run_cli(*common, "--results", str(tmp_path / "truth.json"))
    given = run_cli(*common, "--results", str(tmp_path / "given.json"), "--boxes", boxes_url)
    assert truth.returncode == 0 and given.returncode == 0, (truth.stderr + given.stderr)[-3000:]
    truth_figures, given_figures = json.loads(truth.stdout), json.loads(given.stdout)
    assert given_figures["instances"] == truth_figures["instances"] == len(boxes) > 0
    for key in ("ap", "ap50", "ap75", "ar"):
        assert given_figures[key] == truth_figures[key], key
    # the very same keypoints and scores, not only the same AP
    assert json.loads((tmp_path / "given.json").read_text()) == json.loads((tmp_path / "truth.json").read_text())


def test_keypoints_scored_from_a_detector(coco_on_s3, keypoint_run, tmp_path):
    torch.manual_seed(0)
    task = DetectorTask(DetectorRecipe(model=TINY_DETECTOR))
    # Untrained: it boxes noise.
    detector = save_run(str(tmp_path / "detector"), {**task.config(), "epochs": 1}, task.build_model().state_dict())
    result = run_cli("eval-keypoints", "--data", coco_on_s3, "--model", keypoint_run, "--detector", detector, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert 0 < figures["instances"] <= 3 * 5 and 0 <= figures["ap"] <= 1 and 0 <= figures["box_ap50"] <= 1
    both = run_cli(
        "eval-keypoints", "--data", coco_on_s3, "--model", keypoint_run, "--detector", detector, "--boxes", "x.json"
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_keypoint_rcnn_evaluates_with_its_own_persons(coco_on_s3, s3, tmp_path, monkeypatch):
    """eval-keypoints with torchvision's Keypoint R-CNN: its own boxes, keypoints and person scores
    over every image of the split, scored by COCOeval; --boxes is refused in one line."""
    import numpy as np
    import published

    import jobs.models
    from jobs.annotate import boxes_by_image
    from jobs.evaluate import evaluate_topdown
    from jobs.models import ModelError
    from pose.models.keypoint_rcnn import build_keypoint_rcnn, detect_with_keypoints

    path = tmp_path / "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
    state = published.write_torchvision_checkpoint(path, seed=0)
    small = build_keypoint_rcnn(
        "coco_v1", min_size=128, max_size=192, detections_per_image=3
    )  # torchvision's 800 px is minutes here
    small.load_state_dict(state)
    with torch.no_grad():
        small.roi_heads.box_predictor.cls_score.bias[1] = 6.0  # random weights: make it report persons
    monkeypatch.setattr(jobs.models, "load_keypoint_rcnn_file", lambda spec, options, arch=None: small)

    results = tmp_path / "results.json"
    figures = evaluate_topdown(coco_on_s3, str(path), "val", s3.options, results_file=str(results))
    entries = json.loads(results.read_text())
    images = read_table(coco_on_s3, "images", ("val",), s3.options, columns=["image_id"])["image_id"].to_pylist()
    assert (
        figures["instances"] == len(entries) > 0
        and figures["model"] == "torchvision keypointrcnn_resnet50_fpn (coco_v1)"
    )
    assert 0 <= figures["ap"] <= 1 and {e["image_id"] for e in entries} <= set(images)
    first = read_table(coco_on_s3, "images", ("val",), s3.options).sort_by("image_id").slice(0, 1).to_pylist()[0]
    from pose.images import decode_image

    own = detect_with_keypoints(
        small, [decode_image(read_image_source(first["source"], s3.options), exif_transpose=False)]
    )[0]
    mine = [e for e in entries if e["image_id"] == first["image_id"]]
    np.testing.assert_allclose([e["score"] for e in mine], own["scores"], rtol=1e-6)
    np.testing.assert_allclose(mine[0]["keypoints"], own["keypoints"][0].reshape(-1), atol=1e-3)
    with pytest.raises(ModelError, match="finds its own persons"):
        evaluate_topdown(coco_on_s3, str(path), "val", s3.options, boxes=boxes_by_image([]))
