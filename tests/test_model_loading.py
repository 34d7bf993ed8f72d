"""jobs/models.py: trained models and weight files, local and on the S3 test server, back to the
same outputs; every wrong `--model` is one clear ModelError."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from jobs.models import ModelError, load_detector, load_keypoint_model
from jobs.storage import StorageOptions, join, write_bytes_atomic
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


def write_run(folder: str, info: dict, model: torch.nn.Module, options) -> None:
    """A run folder as jobs/train.py leaves it: model.json and model.pt."""
    write_bytes_atomic(join(folder, "model.json"), json.dumps(info).encode(), options)
    write_bytes_atomic(join(folder, "model.pt"), state_bytes(model), options)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    config = DetectorConfig(arch=MOBILENET, num_classes=2, min_size=160, max_size=240, norm="batch", trainable_backbone_layers=6)
    torch.manual_seed(0)
    model = build_detector(config)
    info = {"task": "detector", "model": config.to_dict(), "recipe": {}, "epochs": 1}
    url = s3_env.make_bucket("runs") + "/detector"
    for folder in (str(tmp_path / "run"), url):
        write_run(folder, info, model, s3_env.options)
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
        write_run(spec, {"task": "svhn", "recipe": {}}, torch.nn.Linear(2, 2), s3_env.options)
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
    write_run(str(tmp_path), {**task.config(), "epochs": 1}, model, StorageOptions())
    loaded, recipe = load_keypoint_model(str(tmp_path))
    assert recipe == task.recipe and not loaded.training
    images = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    with pytest.raises(ModelError, match="not a trained model folder"):
        load_keypoint_model(str(tmp_path / "nothing"))
