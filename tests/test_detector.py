import json

import numpy as np
import pytest
import torch
from torchvision.models import detection

from pose.metrics import coco_box_ap
from pose.models.detector import (
    ARCHITECTURES,
    COCO_CATEGORY_NAMES,
    DetectorConfig,
    build_detector,
    detect,
    detection_results,
    detector_targets,
    load_detector_weights,
    person_detector_from_coco,
)

MOBILENET = "fasterrcnn_mobilenet_v3_large_fpn"
# Small images keep the forward passes of these tests cheap on a CPU.
SMALL = dict(min_size=128, max_size=192)


def small_mobilenet(num_classes: int = 91, seed: int = 0, **fields) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector(DetectorConfig(arch=MOBILENET, num_classes=num_classes, **{**SMALL, **fields}))


def noise_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)]


def parameter_shapes(model: torch.nn.Module) -> dict:
    """state_dict key -> shape, without BatchNorm's counters (FrozenBatchNorm2d has none)."""
    return {key: value.shape for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def resnet_weight_files(tmp_path_factory) -> dict[str, str]:
    """State_dict files of the two untrained ResNet-50 detectors, by arch (about 170 MB each)."""
    folder = tmp_path_factory.mktemp("detector_weights")
    files = {}
    for arch in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"):
        torch.manual_seed(0)
        files[arch] = str(folder / f"{arch}.pth")
        torch.save(build_detector(DetectorConfig(arch=arch)).state_dict(), files[arch])
    return files


@pytest.mark.parametrize(
    "arch, builder",
    [
        ("fasterrcnn_resnet50_fpn_v2", detection.fasterrcnn_resnet50_fpn_v2),
        ("fasterrcnn_resnet50_fpn", detection.fasterrcnn_resnet50_fpn),
        (MOBILENET, detection.fasterrcnn_mobilenet_v3_large_fpn),
    ],
)
def test_detector_has_the_modules_of_torchvisions_builder(arch, builder):
    model = build_detector(DetectorConfig(arch=arch))
    reference = builder(weights=None, weights_backbone=None)
    assert parameter_shapes(model) == parameter_shapes(reference)
    assert not model.training and model.config.arch == arch
    # Frozen as torchvision freezes a detector it gives weights to: the stem does not train.
    stem = next(model.backbone.body.parameters())
    assert not stem.requires_grad
    assert model.roi_heads.box_predictor.cls_score.weight.requires_grad
    assert model.transform.min_size == (512,) and model.transform.max_size == 853
    assert model.rpn.post_nms_top_n() == 1000


def test_v1_detector_runs_frozen_batchnorm_without_eps_as_torchvisions_coco_weights():
    model = build_detector(DetectorConfig(arch="fasterrcnn_resnet50_fpn"))
    frozen = [m for m in model.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen and all(m.eps == 0.0 for m in frozen)


def test_mobilenet_detects_boxes_inside_each_image():
    # 2 classes: an untrained 91-class model scores every class near 1/91, below any threshold.
    model = small_mobilenet(num_classes=2, detections_per_image=10)
    images = noise_images()
    found = detect(model, images)
    assert len(found) == 2
    for image, result in zip(images, found):
        boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape and 0 < len(scores) <= 10
        height, width = image.shape[:2]
        # xywh in the original image's pixels, not the resized one's
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 1] + boxes[:, 3] <= height + 1e-3).all()
        assert (np.diff(scores) <= 0).all() and (scores >= 0.05).all() and (labels == 1).all()
    # a (3, H, W) float tensor is the same image as its (H, W, 3) uint8 array
    as_tensor = torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255
    np.testing.assert_allclose(detect(model, [as_tensor, images[1]])[0]["boxes"], found[0]["boxes"], atol=1e-3)
    assert detect(model, []) == []


def test_an_images_detections_do_not_depend_on_its_batch():
    """torchvision pads a batch to its largest image, which changes the smaller images' features:
    `detect` runs each image size separately, so a re-run that batches differently agrees."""
    model = small_mobilenet(num_classes=2, detections_per_image=10)
    small, large = noise_images()
    assert small.shape != large.shape
    together = detect(model, [small, large, small])
    for image, result in zip([small, large, small], together):
        alone = detect(model, [image])[0]
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(result[key], alone[key])


def test_saved_detector_weights_reload_to_identical_outputs(tmp_path):
    model = small_mobilenet(num_classes=2, seed=0)
    torch.save(model.state_dict(), tmp_path / "detector.pth")
    fresh = small_mobilenet(num_classes=2, seed=1)
    load_detector_weights(fresh, tmp_path / "detector.pth")
    images = noise_images()
    for before, after in zip(detect(model, images), detect(fresh, images)):
        assert len(before["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(before[key], after[key])


def test_resnet_weight_files_load_into_their_arch(resnet_weight_files):
    for arch, path in resnet_weight_files.items():
        fresh = build_detector(DetectorConfig(arch=arch))
        load_detector_weights(fresh, path)
        saved = torch.load(path, weights_only=True)
        loaded = fresh.state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in saved.items())


def test_state_dict_without_batchnorm_counters_loads(tmp_path):
    # torchvision's published files predate or omit BatchNorm's num_batches_tracked.
    model = small_mobilenet(norm="batch")  # a model with counters, a file without
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    fresh = small_mobilenet(seed=1, norm="batch")
    assert not all(torch.equal(fresh.state_dict()[key], value) for key, value in state.items())
    load_detector_weights(fresh, tmp_path / "old.pth")
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert any(key.endswith("num_batches_tracked") for key in loaded)  # the model keeps its own counters


def test_v1_weights_do_not_load_into_v2_arch(resnet_weight_files):
    path = resnet_weight_files["fasterrcnn_resnet50_fpn"]
    with pytest.raises(
        ValueError, match=r"fasterrcnn_resnet50_fpn\.pth \(fasterrcnn_resnet50_fpn_v2, 91 classes\).*missing"
    ) as error:
        load_detector_weights(build_detector(DetectorConfig(arch="fasterrcnn_resnet50_fpn_v2")), path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("problem", ["91 classes", "random bytes", "not a dict", "missing"])
def test_wrong_detector_weight_files_are_named_in_the_error(tmp_path, problem):
    path = tmp_path / "weights.pth"
    if problem == "91 classes":
        torch.save(small_mobilenet(num_classes=91).state_dict(), path)
        expected = r"cls_score.weight \(91, 1024\) vs \(2, 1024\)"
    elif problem == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
        expected = "not a readable torch state_dict"
    elif problem == "not a dict":
        torch.save([torch.zeros(3)], path)
        expected = "expected a dict of tensors"
    else:
        expected = "no such file"
    with pytest.raises(ValueError, match=rf"{tmp_path}/weights\.pth \({MOBILENET}, 2 classes\): .*{expected}") as error:
        load_detector_weights(small_mobilenet(num_classes=2), path)
    assert "\n" not in str(error.value)


def test_person_detector_keeps_the_coco_person_and_background_logits():
    coco = small_mobilenet(num_classes=91)
    person = person_detector_from_coco(coco, DetectorConfig(arch=MOBILENET, num_classes=2, **SMALL))
    assert person.config.num_classes == 2 and not person.training
    coco_state, person_state = coco.state_dict(), person.state_dict()
    for key, value in person_state.items():
        if "box_predictor" not in key:
            assert torch.equal(value, coco_state[key]), key
    box_features = torch.randn(5, 1024)  # what the box head gives for 5 proposals
    with torch.no_grad():
        coco_logits, coco_deltas = coco.roi_heads.box_predictor(box_features)
        person_logits, person_deltas = person.roi_heads.box_predictor(box_features)
    torch.testing.assert_close(person_logits, coco_logits[:, :2])
    torch.testing.assert_close(person_deltas, coco_deltas[:, :8])
    with pytest.raises(ValueError, match="same arch"):
        person_detector_from_coco(coco, DetectorConfig(arch="fasterrcnn_resnet50_fpn", num_classes=2))
    with pytest.raises(ValueError, match="2 classes"):
        person_detector_from_coco(coco, DetectorConfig(arch=MOBILENET, num_classes=91))


def test_detector_targets_drop_crowds_and_degenerate_boxes():
    boxes = np.array([[10, 20, 30, 40], [5, 5, 0.5, 10], [0, 0, 50, 50], [1, 2, 3, 0]], np.float64)
    target = detector_targets(boxes, np.array([1, 1, 1, 18]), np.array([False, False, True, False]))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20.0, 40.0, 60.0]]))
    assert target["labels"].tolist() == [1]
    empty = detector_targets(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool))
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_person_detector_training_lowers_the_loss():
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(arch=MOBILENET, num_classes=2, **SMALL))
    rng = np.random.default_rng(0)
    images, targets = [], []
    for boxes in ([[20, 30, 40, 80]], [[60, 10, 50, 90], [10, 60, 30, 50]]):
        image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        for x, y, w, h in boxes:  # a solid rectangle is the "person"
            image[y : y + h, x : x + w] = (200, 40, 40)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append(detector_targets(np.array(boxes), np.ones(len(boxes)), np.zeros(len(boxes), bool)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    model.train()
    losses = []
    for _ in range(8):
        loss_dict = model(images, targets)
        assert set(loss_dict) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    # mostly the box classifier learning background from person: about -15 % in 8 steps
    assert losses[-1] < 0.9 * losses[0], losses


def test_perfect_detections_give_box_ap_1():
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 40, 80], "area": 3200, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [100, 30, 60, 120], "area": 7200, "iscrowd": 0},
        {"id": 3, "image_id": 8, "category_id": 1, "bbox": [50, 50, 90, 70], "area": 6300, "iscrowd": 0},
        {"id": 4, "image_id": 8, "category_id": 1, "bbox": [200, 10, 80, 80], "area": 6400, "iscrowd": 1},
    ]
    ground_truth = {
        "images": [{"id": 7, "width": 320, "height": 240}, {"id": 8, "width": 320, "height": 240}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    detections = []
    for image_id in (7, 8):
        boxes = [a["bbox"] for a in annotations if a["image_id"] == image_id and not a["iscrowd"]]
        detections.append(
            {
                "boxes": np.array(boxes, np.float32),
                "scores": np.ones(len(boxes), np.float32),
                "labels": np.ones(len(boxes), np.int64),
            }
        )
    results = detection_results([7, 8], detections)
    assert results[0] == {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 40.0, 80.0], "score": 1.0}
    json.dumps(results)
    assert coco_box_ap(ground_truth, results)["ap"] == pytest.approx(1.0)


def test_detection_results_map_labels_to_category_ids():
    found = {
        "boxes": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32),
        "scores": np.array([0.9, 0.4], np.float32),
        "labels": np.array([1, 3]),
    }
    assert [r["category_id"] for r in detection_results([5], [found])] == [1, 3]
    assert [r["category_id"] for r in detection_results([5], [found], category_map={1: 1})] == [1]
    with pytest.raises(ValueError):
        detection_results([5, 6], [found])


def test_detector_config_round_trips_and_names_its_classes():
    config = DetectorConfig(
        arch="fasterrcnn_resnet50_fpn", num_classes=2, min_size=320, max_size=512, score_threshold=0.5
    )
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.category_names() == ("__background__", "person")
    names = DetectorConfig().category_names()
    assert names is COCO_CATEGORY_NAMES and len(names) == 91
    assert names[1] == "person" and names[18] == "dog" and names[12] == "N/A" and names[90] == "toothbrush"
    assert ARCHITECTURES[-1] == DetectorConfig().arch
    with pytest.raises(ValueError, match="fasterrcnn_resnet101"):
        DetectorConfig(arch="fasterrcnn_resnet101")
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        DetectorConfig(arch="fasterrcnn_resnet50_fpn", trainable_backbone_layers=6)


def test_batchnorm_detector_trains_every_backbone_layer_from_scratch():
    config = DetectorConfig(arch=MOBILENET, num_classes=2, norm="batch", trainable_backbone_layers=6, **SMALL)
    model = build_detector(config)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="'frozen'"):
        DetectorConfig(norm="group")


def test_bf16_detections_are_float32_arrays_close_to_the_float32_ones():
    """annotate runs the detector under bf16 autocast on CPUs with native bf16: its outputs still
    come back as float32 arrays, and the best boxes land where float32 puts them."""
    from pose.precision import inference_precision

    model = small_mobilenet(num_classes=2, detections_per_image=5)
    images = noise_images()
    exact = detect(model, images)
    arithmetic = inference_precision("cpu", "bf16")
    with arithmetic.autocast(torch.device("cpu")):
        rough = detect(arithmetic.prepare(model), images)
    for fp32, bf16 in zip(exact, rough):
        assert bf16["boxes"].dtype == np.float32 and bf16["scores"].dtype == np.float32
        assert len(bf16["scores"]) > 0
        # The top box in bf16 overlaps float32's top box (IoU > 0.5), with a close score.
        a, b = fp32["boxes"][0], bf16["boxes"][0]
        x0, y0 = max(a[0], b[0]), max(a[1], b[1])
        x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
        inter = max(0, x1 - x0) * max(0, y1 - y0)
        assert inter / (a[2] * a[3] + b[2] * b[3] - inter) > 0.5
        assert abs(float(bf16["scores"][0]) - float(fp32["scores"][0])) < 0.05
