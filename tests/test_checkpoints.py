"""pose.checkpoints: reading published files, telling what they hold, one line for every bad file."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from pose.checkpoints import CheckpointError, Overrides, identify, load_published, read_checkpoint
from pose.models.keypoints import SimpleBaselineNet

NAME = "td-hm_res50_8xb64-210e_coco-256x192-04af38ce_20220923.pth"


@pytest.fixture(scope="module")
def resnet50_state():
    torch.manual_seed(0)
    return SimpleBaselineNet("resnet50").state_dict()


def mmpose_file(state: dict, legacy: bool = True) -> bytes:
    """A file in MMPose's published container: meta with numpy arrays, then the state_dict."""
    meta = {
        "dataset_meta": {
            "dataset_name": "coco",
            "num_keypoints": 17,
            "flip_indices": [0, 2, 1],
            "sigmas": np.linspace(0.025, 0.089, 17).astype(np.float32),
            "upper_body_ids": np.arange(11),
        },
        "epoch": 210,
        "iter": 100,
        "mmengine_version": "0.10.7",
    }
    buffer = io.BytesIO()
    torch.save({"meta": meta, "state_dict": state}, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def release_file(state: dict) -> bytes:
    """The Simple Baselines release: a plain state_dict under its own names."""
    renamed = {}
    for key, value in state.items():
        renamed[key.removeprefix("backbone.").removeprefix("head.")] = value
    buffer = io.BytesIO()
    torch.save(renamed, buffer)
    return buffer.getvalue()


def test_mmpose_container_with_numpy_meta_reads_with_weights_only(resnet50_state):
    for legacy in (True, False):
        state, meta = read_checkpoint(mmpose_file(resnet50_state, legacy), NAME)
        assert set(state) == set(resnet50_state) and meta["dataset_meta"]["num_keypoints"] == 17
        assert isinstance(meta["dataset_meta"]["sigmas"], np.ndarray)


def test_identify_reads_family_size_and_codec_from_keys_and_name(resnet50_state):
    spec = identify(resnet50_state, NAME)
    assert (spec.framework, spec.arch, spec.input_size, spec.codec, spec.bgr) == (
        "mmpose",
        "resnet50",
        (192, 256),
        "msra",
        False,
    )
    spec = identify(resnet50_state, "td-hm_res50_dark-8xb64-210e_coco-384x288-0b5b3a41_20220812.pth")
    assert (spec.input_size, spec.codec) == ((288, 384), "dark")
    release, _ = read_checkpoint(release_file(resnet50_state), "pose_resnet_50_256x192.pth.tar")
    spec = identify(release, "pose_resnet_50_256x192.pth.tar")
    assert (spec.framework, spec.arch, spec.bgr, spec.codec) == ("simple-baselines", "resnet50", True, "msra")


def test_overrides_apply_and_mismatches_are_one_line(resnet50_state):
    spec = identify(resnet50_state, "weights.pth", Overrides(arch="resnet50", input_size=(288, 384), codec="udp"))
    assert (spec.input_size, spec.codec) == ((288, 384), "udp")
    for overrides, words in (
        (Overrides(arch="hrnet-w32"), "holds a resnet50, not a hrnet-w32"),
        (Overrides(arch="vgg"), "unknown keypoint architecture"),
        (Overrides(codec="simcc"), "decodes with msra, dark or udp"),
        (Overrides(input_size=(190, 256)), "multiples of 32"),
    ):
        with pytest.raises(CheckpointError, match=words) as error:
            identify(resnet50_state, "weights.pth", overrides)
        assert "\n" not in str(error.value)


def test_bad_files_are_one_line_naming_the_file(resnet50_state, tmp_path):
    good = mmpose_file(resnet50_state)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    cases = {
        "truncated.pth": good[: len(good) // 2],
        "code.pth": pickle.dumps({"state_dict": {"w": Payload()}}),
        "text.pth": b"not a checkpoint at all",
    }
    for name, data in cases.items():
        with pytest.raises(CheckpointError, match=f"^{name}: not a readable torch checkpoint") as error:
            read_checkpoint(data, name)
        assert "\n" not in str(error.value)
    wholebody = dict(resnet50_state)
    wholebody["head.final_layer.weight"] = torch.zeros(133, 256, 1, 1)
    wholebody["head.final_layer.bias"] = torch.zeros(133)
    with pytest.raises(CheckpointError, match="133 joints"):
        identify(wholebody, "td-hm_res50_8xb64-210e_coco-wholebody-256x192.pth")
    with pytest.raises(CheckpointError, match="not a keypoint model pose-jobs knows"):
        identify({"fc.weight": torch.zeros(10, 512)}, "resnet18.pth")
    broken = {k: v for k, v in resnet50_state.items() if not k.startswith("backbone.layer4.2.")}
    with pytest.raises(CheckpointError, match="missing"):
        load_published(mmpose_file(broken), NAME)


def test_load_published_runs_the_simple_baseline_with_its_framework_settings(resnet50_state):
    model = load_published(mmpose_file(resnet50_state), NAME)
    assert model.crop.input_size == (192, 256) and model.crop.centring == "mmpose" and not model.bgr
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, resnet50_state[key])
    release = load_published(release_file(resnet50_state), "pose_resnet_50_256x192.pth.tar")
    assert release.bgr
    crops = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    crops[..., 0] = 255  # red
    rgb, bgr = model.inputs(crops), release.inputs(crops)
    assert rgb[0, 0, 0, 0] > 2 and bgr[0, 2, 0, 0] > 2 and bgr[0, 0, 0, 0] < 0  # red lands in the last channel for BGR


def test_init_weights_start_the_trainable_network_from_a_published_file(resnet50_state):
    """train-keypoints --init-weights: MMPose's SimpleBaseline file fills the recipe's whole
    network; a recipe of another network is one clear line."""
    from pose.keypoint_task import KeypointRecipe, KeypointTask
    from pose.recipes import keypoint_recipe

    task = KeypointTask(keypoint_recipe("mmpose-td-hm"), init_weights=(NAME, mmpose_file(resnet50_state)))
    model = task.build_model()
    assert torch.equal(model.head.final_layer.weight, resnet50_state["head.final_layer.weight"])
    assert torch.equal(model.head.deconv_layers[3].weight, resnet50_state["head.deconv_layers.3.weight"])
    assert torch.equal(model.backbone.layer3[5].conv2.weight, resnet50_state["backbone.layer3.5.conv2.weight"])
    with pytest.raises(ValueError, match="resnet18 network: does not match"):
        KeypointTask(KeypointRecipe(), init_weights=(NAME, mmpose_file(resnet50_state))).build_model()
    with pytest.raises(ValueError, match="does not match"):
        KeypointTask(
            keypoint_recipe("simple-baselines", backbone="resnet101"), init_weights=(NAME, mmpose_file(resnet50_state))
        ).build_model()


def test_files_pickled_under_numpy_1_names_read_with_weights_only(tmp_path):
    """Every published MMPose file was written under numpy 1 (`numpy.core.multiarray._reconstruct`):
    it reads under the installed numpy too, and nothing else than numpy's arrays is let through."""
    import published

    path = tmp_path / "td-hm_res50_8xb64-210e_coco-256x192-random.pth"
    published.write_mmpose_checkpoint(path, "mmpose-res50", 0)
    state, meta = read_checkpoint(path.read_bytes(), str(path))
    assert len(state) == 338 and isinstance(meta["dataset_meta"]["sigmas"], np.ndarray)


def test_every_published_layout_is_built_key_for_key():
    """For each published file layout (the manifests read off the frameworks' own code), the file is
    identified and pose-jobs builds a network whose state_dict has exactly its keys and shapes, in
    its order, under MMPose's names."""
    import published

    from pose.checkpoints import build_network, mmpose_keys

    names = {
        "mmpose-res50": NAME,
        "mmpose-res101": "td-hm_res101_8xb64-210e_coco-256x192.pth",
        "mmpose-res152": "td-hm_res152_8xb32-210e_coco-384x288.pth",
        "mmpose-hrnet-w32": "td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.pth",
        "mmpose-hrnet-w48": "td-hm_hrnet-w48_dark-8xb32-210e_coco-384x288.pth",
    }
    expected_arch = {
        "res50": "resnet50",
        "res101": "resnet101",
        "res152": "resnet152",
        "pose_resnet_50": "resnet50",
        "pose_resnet_101": "resnet101",
        "pose_resnet_152": "resnet152",
        "pose_hrnet_w32": "hrnet-w32",
        "pose_hrnet_w48": "hrnet-w48",
    }
    checked = 0
    for layout in published.manifest_names():
        if layout.startswith("torchvision"):
            continue  # a detector with keypoints: tests/test_keypoint_rcnn.py
        keys = published.manifest(layout)
        state = {key: torch.empty(shape, device="meta") for key, shape in keys}
        name = names.get(layout, f"{layout.removeprefix('release-')}_256x192.pth")
        spec = identify(state, name)
        short = layout.split("-", 1)[1].removesuffix("-384x288")
        assert spec.arch == expected_arch.get(short, short), layout
        built = [(key, tuple(value.shape)) for key, value in build_network(spec).state_dict().items()]
        assert [(key, tuple(value.shape)) for key, value in mmpose_keys(state, spec).items()] == built, layout
        checked += 1
    assert checked == 16
