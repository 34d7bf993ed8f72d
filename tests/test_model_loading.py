"""jobs/models.py: trained models and weight files, local and on the S3 test server, back to the
same outputs; every wrong `--model` is one clear ModelError."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from jobs.models import ModelError, load_detector, load_keypoint_model, save_run
from jobs.storage import write_bytes_atomic
from pose.keypoint_task import KeypointRecipe, KeypointTask
from pose.models.detector import DetectorConfig, build_detector, detect

MOBILENET = "fasterrcnn_mobilenet_v3_large_fpn"


def noise_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)]


def person_detector(**fields) -> torch.nn.Module:
    """An untrained 2-class detector: it already finds boxes (a 91-class one scores all below 0.05)."""
    torch.manual_seed(0)
    return build_detector(DetectorConfig(arch=MOBILENET, num_classes=2, **fields))


def assert_same_detections(a, b):
    for before, after in zip(detect(a, noise_images()), detect(b, noise_images())):
        assert len(before["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(before[key], after[key])


def state_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def test_weights_file_loads_by_path_and_by_s3_url(tmp_path, s3_env):
    model = person_detector()
    (tmp_path / "person.pth").write_bytes(state_bytes(model))
    url = s3_env.make_bucket("weights") + "/detectors/person.pth"
    write_bytes_atomic(url, state_bytes(model), s3_env.options)
    for spec in (str(tmp_path / "person.pth"), url):
        loaded = load_detector(spec, s3_env.options, arch=MOBILENET)
        assert not loaded.training and loaded.config.arch == MOBILENET and loaded.config.num_classes == 2
        assert_same_detections(model, loaded)


def test_weights_file_of_a_detector_trained_from_scratch_keeps_its_batchnorm(tmp_path):
    model = person_detector(norm="batch", trainable_backbone_layers=6)
    model.train()
    with torch.no_grad():  # running statistics away from their initial values
        model.backbone(torch.rand(2, 3, 64, 64))
    model.eval()
    (tmp_path / "scratch.pth").write_bytes(state_bytes(model))
    loaded = load_detector(str(tmp_path / "scratch.pth"), arch=MOBILENET)
    assert loaded.config.norm == "batch"
    assert_same_detections(model, loaded)


def test_run_folder_loads_with_its_configuration(tmp_path, s3_env):
    config = DetectorConfig(
        arch=MOBILENET, num_classes=2, min_size=160, max_size=240, norm="batch", trainable_backbone_layers=6
    )
    torch.manual_seed(0)
    model = build_detector(config)
    info = {"task": "detector", "model": config.to_dict(), "recipe": {}, "epochs": 1}
    url = s3_env.make_bucket("runs") + "/detector"
    for folder in (str(tmp_path / "run"), url):
        save_run(folder, info, model.state_dict(), s3_env.options)
        loaded = load_detector(folder, s3_env.options)
        assert loaded.config == config and not loaded.training
        assert_same_detections(model, loaded)
    with pytest.raises(ModelError, match="holds a fasterrcnn_mobilenet_v3_large_fpn, not a fasterrcnn_resnet50_fpn"):
        load_detector(str(tmp_path / "run"), s3_env.options, arch="fasterrcnn_resnet50_fpn")


@pytest.mark.parametrize("problem", ["missing", "random bytes", "other arch", "other task", "unknown arch"])
def test_wrong_detector_is_one_clear_error(tmp_path, s3_env, problem):
    spec, arch = str(tmp_path / "weights.pth"), None
    if problem == "missing":
        expected = "neither a trained detector folder"
    elif problem == "random bytes":
        (tmp_path / "weights.pth").write_bytes(np.random.default_rng(0).bytes(1000))
        expected = "not a readable torch state_dict"
    elif problem == "other arch":
        (tmp_path / "weights.pth").write_bytes(state_bytes(person_detector()))
        expected = r"\(fasterrcnn_resnet50_fpn, 2 classes\): does not match the model.*pass the architecture"
    elif problem == "other task":
        spec = str(tmp_path / "run")
        save_run(spec, {"task": "svhn", "recipe": {}}, torch.nn.Linear(2, 2).state_dict(), s3_env.options)
        expected = "holds a 'svhn' model, not a 'detector' model"
    else:
        arch, expected = "yolo", "unknown detector architecture 'yolo'"
    with pytest.raises(ModelError, match=expected) as error:
        load_detector(spec, s3_env.options, arch=arch)
    assert "\n" not in str(error.value)


def test_keypoint_run_folder_loads_to_the_same_outputs(tmp_path):
    task = KeypointTask(KeypointRecipe(backbone="resnet18", deconv_channels=32))
    torch.manual_seed(0)
    model = task.build_model().eval()
    save_run(str(tmp_path), {**task.config(), "epochs": 1}, model.state_dict())
    loaded, recipe = load_keypoint_model(str(tmp_path))
    assert recipe == task.recipe and not loaded.training
    images = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    with pytest.raises(ModelError, match="not a trained model folder"):
        load_keypoint_model(str(tmp_path / "nothing"))


def test_published_keypoint_file_and_boxes_load_from_s3(tmp_path, s3_env):
    """A published checkpoint (MMPose's container, numpy in meta) and a COCO box-results file are
    read from s3:// as from a local path: the same network, the same boxes."""
    import published

    from jobs.annotate import read_box_results
    from jobs.models import is_keypoint_rcnn, load_pose_model

    name = "rtmpose-tiny_simcc-coco_pt-aic-coco_420e-256x192-e613ba3f_20230127.pth"
    published.write_mmpose_checkpoint(tmp_path / name, "mmpose-rtmpose-t", 0)
    bucket = s3_env.make_bucket("published")
    write_bytes_atomic(f"{bucket}/models/{name}", (tmp_path / name).read_bytes(), s3_env.options)
    boxes = [
        {"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 30.0, 60.0], "score": 0.4},
        {"image_id": 7, "category_id": 1, "bbox": [5.0, 5.0, 20.0, 40.0], "score": 0.9},
    ]
    write_bytes_atomic(f"{bucket}/boxes.json", json.dumps(boxes).encode(), s3_env.options)
    local, remote = load_pose_model(str(tmp_path / name)), load_pose_model(f"{bucket}/models/{name}", s3_env.options)
    assert remote.name == local.name == "mmpose rtmpose-t 256x192 simcc" and not is_keypoint_rcnn(
        f"{bucket}/models/{name}", s3_env.options
    )
    for key, value in local.network.state_dict().items():
        assert torch.equal(value, remote.network.state_dict()[key])
    found, scores = read_box_results(f"{bucket}/boxes.json", s3_env.options)[7]
    np.testing.assert_allclose(scores, [0.9, 0.4])  # best first
    np.testing.assert_allclose(found[0], [5.0, 5.0, 20.0, 40.0])


@pytest.mark.parametrize("problem", ["truncated", "code", "wholebody", "override", "run folder override"])
def test_wrong_published_keypoint_file_is_one_line_exit_2(tmp_path, problem):
    """`pose-jobs eval-keypoints --model FILE` with a file that cannot be used: one line on stderr,
    exit 2, before any work."""
    import pickle

    import published

    name = tmp_path / "td-hm_res50_8xb64-210e_coco-256x192-04af38ce_20220923.pth"
    extra = []
    if problem == "truncated":
        published.write_mmpose_checkpoint(name, "mmpose-res50", 0)
        name.write_bytes(name.read_bytes()[:100_000])
        expected = "not a readable torch checkpoint"
    elif problem == "code":
        name.write_bytes(pickle.dumps({"state_dict": {"w": eval}}, protocol=2))  # as torch.save pickles
        expected = "not a readable torch checkpoint (it would call eval, which weights-only loading refuses)"
    elif problem == "wholebody":
        state = published.random_state_dict("mmpose-res50", 0)
        state["head.final_layer.weight"], state["head.final_layer.bias"] = torch.zeros(133, 256, 1, 1), torch.zeros(133)
        torch.save({"meta": {}, "state_dict": state}, name)
        expected = "a model of 133 joints"
    elif problem == "override":
        published.write_mmpose_checkpoint(name, "mmpose-res50", 0)
        extra, expected = ["--keypoint-arch", "hrnet-w32"], "holds a resnet50, not a hrnet-w32"
    else:
        name = tmp_path / "run"
        task = KeypointTask(KeypointRecipe(deconv_channels=16))
        save_run(str(name), {**task.config(), "epochs": 1}, task.build_model().state_dict())
        extra, expected = ["--codec", "dark"], "knows its own architecture"
    from typer.testing import CliRunner

    from jobs.cli import app

    (tmp_path / "boxes.json").write_text("[]")
    result = CliRunner().invoke(
        app,
        [
            "eval-keypoints",
            "--data",
            str(tmp_path / "no-data"),
            "--model",
            str(name),
            "--boxes",
            str(tmp_path / "boxes.json"),
            *extra,
        ],
    )
    assert result.exit_code == 2 and expected in result.stderr and result.stderr.count("\n") == 1, result.stderr
