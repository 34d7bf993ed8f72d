"""pose.models.hrnet: MMPose's HRNet-W32/W48 layout key for key, its output on published-layout
weights, and the original release's renaming."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from published import load_golden, manifest, random_state_dict

from pose.models.hrnet import build_hrnet, hrnet_keys_from_release

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)  # MMPose's data_preprocessor (RGB)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@cache
def layout(width: int, num_joints: int = 17) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) in state_dict order, built on the meta device (no memory). Cached: do not modify."""
    with torch.device("meta"):
        return [(key, tuple(value.shape)) for key, value in build_hrnet(width, num_joints).state_dict().items()]


def without_prefixes(state: dict) -> dict:
    """What the original release calls the same tensors: MMPose's keys without `backbone.`/`head.`."""
    return {key.split(".", 1)[1]: value for key, value in state.items()}


@pytest.mark.parametrize("width,values,parameters", [(32, 28_590_449, 28_536_113), (48, 63_675_329, 63_595_745)])
def test_key_and_value_counts(width, values, parameters):
    keys = layout(width)
    assert len(keys) == 1754
    assert sum(int(np.prod(shape)) for key, shape in keys if not key.endswith("num_batches_tracked")) == values
    with torch.device("meta"):
        assert sum(p.numel() for p in build_hrnet(width).parameters()) == parameters


@pytest.mark.parametrize("width", [32, 48])
def test_state_dict_is_the_published_manifest_key_for_key(width):
    assert layout(width) == manifest(f"mmpose-hrnet-w{width}")


@pytest.mark.parametrize("width", [32, 48])
def test_release_manifest_renames_onto_the_module(width):
    release = manifest(f"release-pose_hrnet_w{width}")
    renamed = hrnet_keys_from_release({key: torch.empty(shape, device="meta") for key, shape in release})
    assert [(key, tuple(value.shape)) for key, value in renamed.items()] == layout(width)


def test_names_and_shapes_w32():
    shapes = dict(layout(32))
    assert shapes["backbone.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["backbone.bn2.running_var"] == (64,)
    assert shapes["backbone.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.layer1.3.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.transition1.0.0.weight"] == (32, 256, 3, 3)  # channels change: a 3x3 conv
    assert shapes["backbone.transition1.1.0.0.weight"] == (64, 256, 3, 3)  # the new branch: stride 2
    assert shapes["backbone.transition3.3.0.0.weight"] == (256, 128, 3, 3)
    assert not any(key.startswith("backbone.transition2.0.") for key in shapes)  # 32 -> 32: no conv
    assert shapes["backbone.stage2.0.branches.1.3.conv2.weight"] == (64, 64, 3, 3)
    assert shapes["backbone.stage2.0.fuse_layers.0.1.0.weight"] == (32, 64, 1, 1)  # up: 1x1 conv, then nearest
    assert shapes["backbone.stage3.3.fuse_layers.2.0.0.0.weight"] == (32, 32, 3, 3)  # down two steps: first keeps width
    assert shapes["backbone.stage3.3.fuse_layers.2.0.1.0.weight"] == (128, 32, 3, 3)
    assert shapes["backbone.stage4.1.fuse_layers.3.2.0.0.weight"] == (256, 128, 3, 3)  # down one step
    assert shapes["backbone.stage4.1.fuse_layers.3.0.2.0.weight"] == (256, 32, 3, 3)  # down three steps
    assert shapes["backbone.stage4.2.fuse_layers.0.3.0.weight"] == (32, 256, 1, 1)
    assert shapes["backbone.stage4.2.fuse_layers.0.3.1.num_batches_tracked"] == ()
    # The last module fuses only the stride-4 branch.
    assert not any(key.startswith("backbone.stage4.2.fuse_layers.1.") for key in shapes)
    assert list(shapes)[-2:] == ["head.final_layer.weight", "head.final_layer.bias"]
    assert shapes["head.final_layer.weight"] == (17, 32, 1, 1)


def test_names_and_shapes_w48_and_other_joint_counts():
    shapes = dict(layout(48))
    assert shapes["backbone.transition1.0.0.weight"] == (48, 256, 3, 3)
    assert shapes["backbone.stage4.0.branches.3.0.conv1.weight"] == (384, 384, 3, 3)
    assert shapes["backbone.stage4.2.fuse_layers.0.3.0.weight"] == (48, 384, 1, 1)
    assert shapes["head.final_layer.weight"] == (17, 48, 1, 1)
    assert dict(layout(32, num_joints=19))["head.final_layer.bias"] == (19,)  # MMPose's COCO+AIC "combine" model


@pytest.mark.parametrize("width,size", [(32, (96, 64)), (48, (64, 64))])
def test_forward_shape(width, size):
    torch.manual_seed(0)
    model = build_hrnet(width).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(2, 3, *size))
    assert heatmaps.shape == (2, 17, size[0] // 4, size[1] // 4)
    assert torch.isfinite(heatmaps).all()


def test_input_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_hrnet(32)(torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError, match="W32 and W48"):
        build_hrnet(40)


def test_reproduces_mmpose_on_published_layout_weights():
    """MMPose 1.3.2's own raw output (tests/data/goldens, `tools/make_pose_goldens.py`) on its crops,
    with the same seeded weights loaded strictly from the published layout."""
    golden = load_golden("mmpose-hrnet-w32-256x192")
    model = build_hrnet(32).eval()
    model.load_state_dict(random_state_dict(golden["weights_name"], golden["seed"]))
    crops = torch.from_numpy(golden["crops"]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        heatmaps = model((crops - MEAN) / STD).numpy()
    expected = golden["output"]
    assert np.abs(expected[0] - expected[1]).max() > 1.0  # the two persons' outputs differ: the test sees the image
    # float32 at |output| up to ~42: measured 4.4e-5 (one thread here, MMPose's run on two).
    np.testing.assert_allclose(heatmaps, expected, rtol=0, atol=5e-4)


def test_release_renaming_round_trips():
    state = build_hrnet(32).state_dict()
    renamed = hrnet_keys_from_release(without_prefixes(state))
    assert list(renamed) == list(state)
    assert all(renamed[key] is state[key] for key in state)  # the same tensors, not copies
    # A DataParallel state_dict (`module.` prefix), and an old file without BatchNorm counters.
    assert list(hrnet_keys_from_release({f"module.{k}": v for k, v in without_prefixes(state).items()})) == list(state)
    old = {k: v for k, v in without_prefixes(state).items() if not k.endswith("num_batches_tracked")}
    renamed = hrnet_keys_from_release(old)
    assert list(renamed) == list(state) and renamed["backbone.bn1.num_batches_tracked"].item() == 0
    build_hrnet(32).load_state_dict(renamed)


def test_release_weights_load_and_give_the_mmpose_output():
    """The release's file is MMPose's tensors without prefixes: same weights, same heatmaps."""
    mmpose = random_state_dict("mmpose-hrnet-w32", seed=3)
    release = {key: value for (key, _), value in zip(manifest("release-pose_hrnet_w32"), mmpose.values())}
    a, b = build_hrnet(32).eval(), build_hrnet(32).eval()
    a.load_state_dict(mmpose)
    b.load_state_dict(hrnet_keys_from_release(release))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_wrong_state_dicts_are_refused_with_what_is_wrong():
    release = without_prefixes(dict(layout(32)))
    release = {key: torch.empty(shape, device="meta") for key, shape in release.items()}
    with pytest.raises(ValueError, match="no 4-d final_layer.weight.*backbone.conv1.weight"):
        hrnet_keys_from_release({f"backbone.{k}": v for k, v in release.items()})  # an MMPose state_dict
    with pytest.raises(ValueError, match="missing .*stage3.0.branches.0.0.conv1.weight"):
        hrnet_keys_from_release({k: v for k, v in release.items() if k != "stage3.0.branches.0.0.conv1.weight"})
    with pytest.raises(ValueError, match=r"unexpected \(e.g. backbone.extra.weight\)"):
        hrnet_keys_from_release({**release, "extra.weight": torch.zeros(1)})
    with pytest.raises(
        ValueError, match=r"wrong shape \(e.g. backbone.conv1.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"
    ):
        hrnet_keys_from_release({**release, "conv1.weight": torch.zeros(64, 3, 7, 7)})
    simple_baselines = {"conv1.weight": torch.zeros(64, 3, 7, 7), "final_layer.weight": torch.zeros(17, 256, 1, 1)}
    with pytest.raises(ValueError, match="takes 256 channels"):
        hrnet_keys_from_release(simple_baselines)
