"""pose.models.keypoint_rcnn against torchvision's own keypointrcnn_resnet50_fpn.

The reference is torchvision's builder called with the published weights enum
(`weights=KeypointRCNN_ResNet50_FPN_Weights.COCO_V1` / `COCO_LEGACY`), the code path that runs the
published files: FrozenBatchNorm2d, strict loading and `overwrite_eps` for COCO_V1 only. Its
download is replaced by reading the test's own weight file (`torchvision.models._api.
load_state_dict_from_url`), so nothing is fetched. Random weights are shaped so that the model
finds people: the person logit gets a large bias and the box regressions are zeroed (boxes are the
anchors), and some frozen BatchNorm variances are tiny so that eps 0 and 1e-5 give different outputs.
"""

import os

import numpy as np
import pytest
import torch
import torchvision.models._api as torchvision_weights_api
from torchvision.models import detection
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights
from torchvision.ops import FrozenBatchNorm2d

from pose.models.keypoint_rcnn import (
    VARIANT_EPS,
    build_keypoint_rcnn,
    detect_with_keypoints,
    is_keypoint_rcnn_state,
    load_keypoint_rcnn,
    variant_of_file,
)

V1_NAME = "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
LEGACY_NAME = "keypointrcnn_resnet50_fpn_coco-9f466800.pth"
WEIGHTS = {
    "coco_v1": KeypointRCNN_ResNet50_FPN_Weights.COCO_V1,
    "legacy": KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY,
}
# Small inputs and few boxes keep a forward pass near a second on one thread (the keypoint head
# costs ~4 GFLOP per box). torchvision's builder gets the same settings.
MINE = {"min_size": 128, "max_size": 192, "detections_per_image": 2, "proposals_per_image": 60}
THEIRS = {"min_size": 128, "max_size": 192, "box_detections_per_img": 2, "rpn_post_nms_top_n_test": 60}


def random_person_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict in the published layout that detects people in any image."""
    torch.manual_seed(seed)
    state = build_keypoint_rcnn("coco_v1").state_dict()
    generator = torch.Generator().manual_seed(seed)
    for key in [k for k in state if k.endswith("running_var")]:
        # Variances of 1e-4..1e-3 with the weight scaled to keep unit gain: eps 1e-5 then moves
        # each normalised activation by up to ~5 %, so the eps rule shows in the outputs.
        variance = torch.empty_like(state[key]).uniform_(1e-4, 1e-3, generator=generator)
        prefix = key[: -len("running_var")]
        state[key] = variance
        state[prefix + "weight"] = state[prefix + "weight"] * variance.sqrt()
        state[prefix + "running_mean"] = torch.randn(state[key].shape, generator=generator) * 0.01
    state["roi_heads.box_predictor.cls_score.weight"] *= 0.1  # varied scores, all near 1
    state["roi_heads.box_predictor.cls_score.bias"] = torch.tensor([0.0, 6.0])
    for key in ("rpn.head.bbox_pred", "roi_heads.box_predictor.bbox_pred"):
        state[f"{key}.weight"].zero_()
        state[f"{key}.bias"].zero_()
    return state


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    """The random weights under both published names (one file, two links): variant -> path."""
    folder = tmp_path_factory.mktemp("keypoint_rcnn")
    torch.save(random_person_state(), folder / V1_NAME)
    os.link(folder / V1_NAME, folder / LEGACY_NAME)
    return {"coco_v1": str(folder / V1_NAME), "legacy": str(folder / LEGACY_NAME)}


@pytest.fixture(scope="module")
def models(weight_files) -> dict[str, torch.nn.Module]:
    """Our loader on the random weights, variant -> model (the variant read from the file name)."""
    return {variant: load_keypoint_rcnn(path, **MINE) for variant, path in weight_files.items()}


def torchvision_reference(variant: str, path: str, monkeypatch) -> torch.nn.Module:
    """torchvision's keypointrcnn_resnet50_fpn(weights=<variant's enum>) with `path` as the download."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    urls = []
    monkeypatch.setattr(
        torchvision_weights_api, "load_state_dict_from_url", lambda url, *a, **k: urls.append(url) or state
    )
    model = detection.keypointrcnn_resnet50_fpn(weights=WEIGHTS[variant], **THEIRS).eval()
    assert urls and urls[0].endswith(os.path.basename(path))  # the weights came from our file, by that name
    return model


def images() -> list[np.ndarray]:
    """A landscape image of blobs and a portrait one of noise (different sizes: one model call each)."""
    rng = np.random.default_rng(0)
    blobs = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    return [blobs, rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)]


def test_published_layout():
    model = build_keypoint_rcnn()
    state = model.state_dict()
    assert len(state) == 313
    assert sum(p.numel() for p in model.parameters()) == KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"]
    assert not any(key.endswith("num_batches_tracked") for key in state)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    assert tuple(state["roi_heads.box_predictor.cls_score.weight"].shape) == (2, 1024)
    assert tuple(state["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape) == (512, 17, 4, 4)
    assert not model.training and model.variant == "coco_v1"
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen[0] == "backbone.body.conv1.weight"
    assert all(name.startswith(("backbone.body.conv1", "backbone.body.layer1")) for name in frozen)
    # torchvision's builder without weights has BatchNorm2d, but the same keys and shapes besides its counters.
    theirs = detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    counters = [k for k in theirs if k.endswith("num_batches_tracked")]
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in theirs.items() if k not in counters
    }
    with pytest.raises(ValueError, match="unknown Keypoint R-CNN variant"):
        build_keypoint_rcnn("coco_v2")


def assert_same_detections(found: dict, expected: dict, image: np.ndarray):
    """Our output of one image against torchvision's, after our conversions."""
    assert len(found["scores"]) == 2  # the random model does find (as many as allowed) people
    assert found["boxes"].dtype == np.float32 and found["keypoints"].dtype == np.float32
    assert found["keypoints"].shape == (2, 17, 3)
    x1y1 = expected["boxes"][:, :2].numpy()
    np.testing.assert_allclose(found["boxes"][:, :2], x1y1, atol=1e-4)
    np.testing.assert_allclose(
        found["boxes"][:, 2:], expected["boxes"][:, 2:].numpy() - x1y1, atol=1e-4
    )  # xyxy -> xywh
    np.testing.assert_allclose(found["scores"], expected["scores"].numpy(), atol=1e-6)
    assert np.all(np.diff(found["scores"]) <= 0)  # best first
    np.testing.assert_array_equal(found["labels"], expected["labels"].numpy())
    assert set(found["labels"].tolist()) == {1}
    # Keypoints as torchvision reports them (no offset), its keypoints_scores as the confidence
    # (heatmap logits of tens here: 1e-4 is float32 rounding at that size).
    np.testing.assert_allclose(found["keypoints"][..., :2], expected["keypoints"][..., :2].numpy(), atol=1e-4)
    np.testing.assert_allclose(found["keypoints"][..., 2], expected["keypoints_scores"].numpy(), rtol=1e-5, atol=1e-4)
    assert torch.all(expected["keypoints"][..., 2] == 1)  # torchvision's third column: visibility, always 1
    # Keypoints spread over their boxes (not all stuck on one spot), inside the image.
    assert len(np.unique(found["keypoints"][..., :2].round(1).reshape(-1, 2), axis=0)) > 10
    h, w = image.shape[:2]
    assert np.all((found["keypoints"][..., 0] >= 0) & (found["keypoints"][..., 0] <= w))
    assert np.all((found["keypoints"][..., 1] >= 0) & (found["keypoints"][..., 1] <= h))


@pytest.mark.parametrize("variant", ["coco_v1", "legacy"])
def test_outputs_equal_torchvision(variant, weight_files, models, monkeypatch):
    reference = torchvision_reference(variant, weight_files[variant], monkeypatch)
    mine = models[variant]
    assert mine.variant == variant and not mine.training
    # The eps rule per variant, as torchvision applies it after loading the file.
    eps = [m.eps for m in mine.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert eps == [m.eps for m in reference.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert set(eps) == {VARIANT_EPS[variant]}
    batch = images() if variant == "coco_v1" else images()[:1]
    ours = detect_with_keypoints(mine, batch)
    with torch.no_grad():
        theirs = [reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0] for image in batch]
    for image, found, expected in zip(batch, ours, theirs):
        assert_same_detections(found, expected, image)


def test_eps_changes_outputs(models):
    """The same weights read as COCO_V1 (eps 0) and as legacy (eps 1e-5) give other outputs: the eps
    rule is not a no-op, so matching torchvision above pins it."""
    image = images()[:1]
    v1, legacy = (detect_with_keypoints(models[variant], image)[0] for variant in ("coco_v1", "legacy"))
    assert not np.allclose(v1["keypoints"][..., 2], legacy["keypoints"][..., 2], atol=1e-2)


def test_batch_of_one_size_equals_one_by_one(models):
    model = models["coco_v1"]
    image = images()[0]
    batch = [image, np.ascontiguousarray(image[:, ::-1])]  # one size: one model call
    together = detect_with_keypoints(model, batch)
    alone = detect_with_keypoints(model, batch[1:])[0]
    for key in ("boxes", "scores", "keypoints"):
        np.testing.assert_allclose(together[1][key], alone[key], rtol=1e-5, atol=1e-4)
    assert not np.allclose(together[0]["keypoints"], together[1]["keypoints"])  # two images, two answers
    assert detect_with_keypoints(model, []) == []


def test_state_detection_and_variant_names(models):
    state = models["coco_v1"].state_dict()
    assert is_keypoint_rcnn_state(state)
    # Faster R-CNN's layout: the same but for the keypoint head and predictor.
    assert not is_keypoint_rcnn_state({k: v for k, v in state.items() if not k.startswith("roi_heads.keypoint_")})
    assert not is_keypoint_rcnn_state(
        {"backbone.conv1.weight": torch.zeros(1), "head.final_layer.weight": torch.zeros(1)}
    )
    assert variant_of_file(f"/models/{V1_NAME}") == "coco_v1"
    assert variant_of_file(LEGACY_NAME) == "legacy"
    assert variant_of_file("keypoints.pth") is None


def test_wrong_files_are_one_clear_error(tmp_path, weight_files):
    bad = tmp_path / V1_NAME
    # A piece of a 91-class Faster R-CNN file.
    torch.save(
        {
            "backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7),
            "roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024),
        },
        bad,
    )
    with pytest.raises(ValueError) as error:
        load_keypoint_rcnn(bad)
    message = str(error.value)
    assert str(bad) in message and "coco_v1" in message
    assert "missing" in message and "wrong shape" in message and "cls_score.weight (91, 1024) vs (2, 1024)" in message
    text = tmp_path / LEGACY_NAME
    text.write_text("not weights")
    with pytest.raises(ValueError, match="not a readable torch state_dict"):
        load_keypoint_rcnn(text)
    with pytest.raises(ValueError, match="no such file"):
        load_keypoint_rcnn(tmp_path / "absent" / V1_NAME)
    renamed = tmp_path / "keypoints.pth"
    os.link(weight_files["coco_v1"], renamed)
    with pytest.raises(ValueError, match="pass variant="):
        load_keypoint_rcnn(renamed)
    # A file object is named by its .name.
    with open(bad, "rb") as file, pytest.raises(ValueError, match=f"{bad} \\(legacy\\): does not match"):
        load_keypoint_rcnn(file, variant="legacy")
