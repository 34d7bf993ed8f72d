"""The published layouts, the random weights written in them, and the frameworks' golden outputs
(`tests/published.py`, `tools/make_pose_goldens.py`)."""

from __future__ import annotations

import pickletools

import numpy as np
import published
import pytest
import torch

MMPOSE = [
    "mmpose-res50",
    "mmpose-res101",
    "mmpose-res152",
    "mmpose-hrnet-w32",
    "mmpose-hrnet-w48",
    "mmpose-rtmpose-t",
    "mmpose-rtmpose-s",
    "mmpose-rtmpose-m",
    "mmpose-rtmpose-l",
    "mmpose-rtmpose-m-384x288",
    "mmpose-rtmpose-l-384x288",
]
RELEASES = [
    "release-pose_resnet_50",
    "release-pose_resnet_101",
    "release-pose_resnet_152",
    "release-pose_hrnet_w32",
    "release-pose_hrnet_w48",
]
TORCHVISION = "torchvision-keypointrcnn_resnet50_fpn"


def test_every_published_layout_has_a_manifest():
    assert published.manifest_names() == sorted(MMPOSE + RELEASES + [TORCHVISION])


@pytest.mark.parametrize("name", MMPOSE + RELEASES + [TORCHVISION])
def test_manifest_loads_with_unique_keys_and_a_source(name):
    layout = published.manifest(name)
    doc = published.manifest_document(name)
    assert doc["source"] and doc["container"]
    keys = [key for key, _ in layout]
    assert len(set(keys)) == len(keys) > 200
    assert all(isinstance(s, tuple) and all(isinstance(d, int) and d > 0 for d in s) for _, s in layout)


def test_manifests_agree_with_what_is_known_of_the_files():
    """Counts and shapes that the frameworks' docs and model zoos state (and that the loaders rely on)."""
    assert len(published.manifest("mmpose-res50")) == 338 and len(published.manifest("mmpose-hrnet-w32")) == 1754
    assert len(published.manifest("mmpose-rtmpose-m")) == 362 and len(published.manifest(TORCHVISION)) == 313
    rtm = dict(published.manifest("mmpose-rtmpose-m"))
    assert rtm["head.final_layer.weight"] == (17, 768, 7, 7)
    assert rtm["head.cls_x.weight"] == (384, 256) and rtm["head.cls_y.weight"] == (512, 256)
    rtm384 = dict(published.manifest("mmpose-rtmpose-m-384x288"))
    assert rtm384["head.cls_x.weight"] == (576, 256) and rtm384["head.mlp.1.weight"] == (256, 108)
    assert dict(published.manifest("mmpose-hrnet-w48"))["head.final_layer.weight"] == (17, 48, 1, 1)
    assert dict(published.manifest("mmpose-res50"))["head.deconv_layers.0.weight"] == (2048, 256, 4, 4)
    tv = dict(published.manifest(TORCHVISION))
    assert tv["roi_heads.box_predictor.cls_score.weight"] == (2, 1024)
    assert not any(key.endswith("num_batches_tracked") for key in tv)
    values = sum(int(np.prod(s)) for k, s in tv.items())
    assert values == 59_243_498  # 59,137,258 parameters + the FrozenBatchNorm2d buffers


@pytest.mark.parametrize(
    "mmpose_name,release", [("mmpose-res50", "release-pose_resnet_50"), ("mmpose-hrnet-w32", "release-pose_hrnet_w32")]
)
def test_releases_are_mmpose_layouts_without_prefixes(mmpose_name, release):
    stripped = [(key.split(".", 1)[1], shape) for key, shape in published.manifest(mmpose_name)]
    assert stripped == published.manifest(release)


@pytest.mark.parametrize("name", ["mmpose-res50", "mmpose-rtmpose-t", "release-pose_hrnet_w32", TORCHVISION])
def test_random_state_dict_matches_manifest_and_is_deterministic(name):
    first = published.random_state_dict(name, seed=0)
    assert [(k, tuple(v.shape)) for k, v in first.items()] == published.manifest(name)
    again = published.random_state_dict(name, seed=0)
    assert published.state_dict_digest(first) == published.state_dict_digest(again)
    other = published.random_state_dict(name, seed=1)
    weight = next(k for k, v in first.items() if v.dim() == 4)
    assert not torch.equal(first[weight], other[weight])
    for key, value in first.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == torch.int64
        else:
            assert value.dtype == torch.float32 and torch.isfinite(value).all()
        if key.endswith("running_var"):
            assert (value > 0).all()


def test_random_values_depend_on_the_key_and_seed_only():
    m256 = published.random_state_dict("mmpose-rtmpose-m", seed=3)
    m384 = published.random_state_dict("mmpose-rtmpose-m-384x288", seed=3)
    assert torch.equal(m256["backbone.stem.0.conv.weight"], m384["backbone.stem.0.conv.weight"])
    # one stream per key: the 384x288 head's cls_x (576, 256) starts with the 256x192 one's (384, 256)
    assert torch.equal(m256["head.cls_x.weight"], m384["head.cls_x.weight"][:384])
    # He scaling: a 3x3 conv over 96 channels has std sqrt(2 / 864)
    w = m256["backbone.stage2.1.blocks.0.conv1.conv.weight"]
    assert w.shape == (96, 96, 3, 3) and abs(w.std().item() - (2 / 864) ** 0.5) < 0.002


def _pickle_globals(path) -> set[str]:
    """The GLOBAL opcodes of a legacy-format torch file's object pickle (its 4th pickle)."""
    with open(path, "rb") as f:
        for _ in range(4):
            found = {arg for op, arg, _ in pickletools.genops(f) if op.name in ("GLOBAL", "STACK_GLOBAL")}
    return found


def test_mmpose_checkpoint_container_and_weights_only_loading(tmp_path):
    path = tmp_path / "rtmpose-t.pth"
    written = published.write_mmpose_checkpoint(path, "mmpose-rtmpose-t", seed=0)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK", "publish_model.py writes the legacy (non-zip) format"
    assert "numpy.core.multiarray _reconstruct" in _pickle_globals(path)  # as numpy 1.x pickled it
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals(published.numpy_safe_globals()):
        loaded = torch.load(path, weights_only=True)
    assert list(loaded) == ["meta", "state_dict"]
    assert list(loaded["state_dict"]) == [key for key, _ in published.manifest("mmpose-rtmpose-t")]
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in written["state_dict"].items())
    meta = loaded["meta"]["dataset_meta"]
    assert meta["sigmas"].dtype == np.float32 and meta["keypoint_colors"].dtype == np.uint8
    assert meta["flip_indices"] == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_release_and_torchvision_files_are_bare_state_dicts(tmp_path):
    release = tmp_path / "pose_resnet_50_256x192.pth.tar"
    published.write_release_checkpoint(release, "release-pose_resnet_50")
    loaded = torch.load(release, weights_only=True)  # tensors only: no allow-list needed
    assert list(loaded) == [key for key, _ in published.manifest("release-pose_resnet_50")]
    tv = tmp_path / "keypointrcnn.pth"
    published.write_torchvision_checkpoint(tv)
    assert len(torch.load(tv, weights_only=True)) == 313


GOLDEN_VARIANTS = [
    "mmpose-res50-256x192",
    "mmpose-hrnet-w32-256x192",
    "mmpose-hrnet-w32-dark-256x192",
    "mmpose-hrnet-w32-udp-256x192",
    "mmpose-hrnet-w48-384x288",
    "mmpose-rtmpose-t-256x192",
    "mmpose-rtmpose-m-256x192",
    "release-pose_resnet_50-256x192",
    "release-pose_hrnet_w32-256x192",
]


def test_every_golden_is_there():
    assert published.golden_names() == sorted(GOLDEN_VARIANTS)


@pytest.mark.parametrize("variant", GOLDEN_VARIANTS)
def test_golden_is_self_consistent(variant):
    g = published.load_golden(variant)
    P = len(g["boxes"])
    H, W, _ = g["image"].shape
    assert g["image"].dtype == np.uint8 and g["boxes"].shape == (P, 4) and g["box_scores"].shape == (P,)
    assert g["centers"].shape == g["scales"].shape == (P, 2) and g["warps"].shape == (P, 2, 3)
    h, w = {"256x192": (256, 192), "384x288": (384, 288)}[variant[-7:]]
    assert g["crops"].shape == (P, h, w, 3) and g["crops"].dtype == np.uint8
    assert g["keypoints"].shape == (P, 17, 2) and g["keypoint_scores"].shape == (P, 17)
    assert g["keypoints"].dtype == g["keypoint_scores"].dtype == np.float32
    if "simcc_x" in g:
        assert g["simcc_x"].shape == g["simcc_x_flipped"].shape == (P, 17, 2 * w)
        assert g["simcc_y"].shape == g["simcc_y_flipped"].shape == (P, 17, 2 * h)
    else:
        assert g["output"].shape == g["output_flipped"].shape == (P, 17, h // 4, w // 4)
        assert g["output"].dtype == np.float32
    assert g["weights_name"] in published.manifest_names() and g["framework"]
    # The warps take each box centre to the middle of the input ((w / 2, h / 2); UDP's ((w - 1) / 2, (h - 1) / 2)).
    for warp, centre in zip(g["warps"], g["centers"]):
        assert np.allclose(warp @ np.append(centre, 1.0), [w / 2, h / 2], atol=0.51)
    # The boxes' centres are the centres' source (MMPose in pixels; the releases likewise, scale / 200).
    assert np.allclose(g["centers"], g["boxes"][:, :2] + g["boxes"][:, 2:] / 2, atol=1e-3)


@pytest.mark.parametrize(
    "variant", ["mmpose-rtmpose-t-256x192", "mmpose-res50-256x192", "release-pose_resnet_50-256x192"]
)
def test_golden_weights_are_what_published_makes_today(variant):
    """If numpy's random streams or the value rules change, the goldens no longer describe these weights."""
    g = published.load_golden(variant)
    state = published.random_state_dict(g["weights_name"], g["seed"])
    assert published.state_dict_digest(state) == g["weights_sha256"]
