"""pose.models.rtmpose: MMPose's RTMPose-t/s/m/l layout (keys, shapes), outputs, weight loading."""

from __future__ import annotations

import pytest
import torch
from published import manifest, random_state_dict

from pose.models.rtmpose import GatedAttentionUnit, RTMPoseConfig, build_rtmpose, load_rtmpose_state_dict

# Keys and values (parameters, without BatchNorm statistics) of each size at 256x192; the value
# counts are the "Params(M)" of MMPose's projects/rtmpose tables (3.34, 5.47, 13.59, 27.66).
SIZES = {"t": (218, 3_337_007), "s": (254, 5_473_251), "m": (362, 13_587_611), "l": (470, 27_660_339)}


def on_meta(config: RTMPoseConfig) -> torch.nn.Module:
    """The model without memory or initialisation (shapes only): RTMPose-l in milliseconds."""
    with torch.device("meta"):
        return build_rtmpose(config)


def shapes(config: RTMPoseConfig) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in on_meta(config).state_dict().items()}


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A reproducible state_dict with live BatchNorm statistics (not the identity) and weights
    scaled so the signal neither dies nor explodes through the backbone."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
        elif value.dim() >= 2:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        else:
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
    return state


@pytest.mark.parametrize("size", list(SIZES))
def test_key_and_value_counts_per_size(size):
    state = on_meta(RTMPoseConfig(size=size)).state_dict()
    keys, values = SIZES[size]
    assert len(state) == keys
    assert (
        sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        == values
    )
    assert all(k.startswith(("backbone.", "head.")) for k in state)


@pytest.mark.parametrize(
    "name, config",
    [
        ("mmpose-rtmpose-t", RTMPoseConfig(size="t")),
        ("mmpose-rtmpose-s", RTMPoseConfig(size="s")),
        ("mmpose-rtmpose-m", RTMPoseConfig(size="m")),
        ("mmpose-rtmpose-l", RTMPoseConfig(size="l")),
        ("mmpose-rtmpose-m-384x288", RTMPoseConfig(size="m", input_size=(288, 384))),
        ("mmpose-rtmpose-l-384x288", RTMPoseConfig(size="l", input_size=(288, 384))),
    ],
)
def test_state_dict_is_the_published_manifest_key_for_key(name, config):
    # tests/data/published/<name>.json: keys, shapes and order of the published file's state_dict.
    assert list(shapes(config).items()) == manifest(name)


def test_published_layout_random_weights_load_and_run():
    model = build_rtmpose(RTMPoseConfig(size="t")).eval()
    load_rtmpose_state_dict(model, random_state_dict("mmpose-rtmpose-t", seed=3), where="mmpose-rtmpose-t")
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        simcc_x, simcc_y = model(images)
    assert torch.isfinite(simcc_x).all() and torch.isfinite(simcc_y).all()
    assert (simcc_x[0] - simcc_x[1]).abs().max() > 1e-2


def test_published_names_and_shapes_m_256x192():
    got = shapes(RTMPoseConfig(size="m", input_size=(192, 256)))
    expected = {
        "backbone.stem.0.conv.weight": (24, 3, 3, 3),
        "backbone.stem.0.bn.running_var": (24,),
        "backbone.stem.2.conv.weight": (48, 24, 3, 3),
        "backbone.stage1.0.conv.weight": (96, 48, 3, 3),
        "backbone.stage1.1.main_conv.conv.weight": (48, 96, 1, 1),
        "backbone.stage1.1.blocks.1.conv1.conv.weight": (48, 48, 3, 3),
        "backbone.stage1.1.blocks.1.conv2.depthwise_conv.conv.weight": (48, 1, 5, 5),
        "backbone.stage1.1.blocks.1.conv2.pointwise_conv.bn.num_batches_tracked": (),
        "backbone.stage1.1.attention.fc.weight": (96, 96, 1, 1),
        "backbone.stage1.1.attention.fc.bias": (96,),
        "backbone.stage3.1.blocks.3.conv2.pointwise_conv.conv.weight": (192, 192, 1, 1),
        "backbone.stage4.1.conv1.conv.weight": (384, 768, 1, 1),  # SPP
        "backbone.stage4.1.conv2.conv.weight": (768, 1536, 1, 1),
        "backbone.stage4.2.final_conv.conv.weight": (768, 768, 1, 1),
        "head.final_layer.weight": (17, 768, 7, 7),
        "head.final_layer.bias": (17,),
        "head.mlp.0.g": (1,),
        "head.mlp.1.weight": (256, 48),
        "head.gau.gamma": (2, 128),
        "head.gau.beta": (2, 128),
        "head.gau.o.weight": (256, 512),
        "head.gau.uv.weight": (1152, 256),
        "head.gau.ln.g": (1,),
        "head.gau.res_scale.scale": (256,),
        "head.cls_x.weight": (384, 256),
        "head.cls_y.weight": (512, 256),
    }
    assert {key: got.get(key) for key in expected} == expected
    # Deepen 0.67: 2, 4, 4, 2 CSPNeXt blocks; no others.
    for stage, blocks in zip((1, 2, 3, 4), (2, 4, 4, 2)):
        index = 2 if stage == 4 else 1
        assert f"backbone.stage{stage}.{index}.blocks.{blocks - 1}.conv1.conv.weight" in got
        assert f"backbone.stage{stage}.{index}.blocks.{blocks}.conv1.conv.weight" not in got
    # No biases before BatchNorm, none in the head's linears (MMPose: ConvModule bias="auto", bias=False).
    assert not [
        k for k in got if k.endswith(".conv.bias") or k in ("head.mlp.1.bias", "head.cls_x.bias", "head.gau.uv.bias")
    ]
    # The head's keys in MMPose's registration order (what a manifest lists).
    assert [k for k in got if k.startswith("head.")] == [
        "head.final_layer.weight",
        "head.final_layer.bias",
        "head.mlp.0.g",
        "head.mlp.1.weight",
        "head.gau.gamma",
        "head.gau.beta",
        "head.gau.o.weight",
        "head.gau.uv.weight",
        "head.gau.ln.g",
        "head.gau.res_scale.scale",
        "head.cls_x.weight",
        "head.cls_y.weight",
    ]


@pytest.mark.parametrize(
    "size, input_size, expected",
    [
        (
            "t",
            (192, 256),
            {
                "backbone.stem.0.conv.weight": (12, 3, 3, 3),
                "head.final_layer.weight": (17, 384, 7, 7),
                "backbone.stage4.2.blocks.0.conv2.depthwise_conv.conv.weight": (192, 1, 5, 5),
            },
        ),
        ("s", (192, 256), {"backbone.stem.2.conv.weight": (32, 16, 3, 3), "head.final_layer.weight": (17, 512, 7, 7)}),
        (
            "l",
            (192, 256),
            {
                "backbone.stem.2.conv.weight": (64, 32, 3, 3),
                "head.final_layer.weight": (17, 1024, 7, 7),
                "backbone.stage2.1.blocks.5.conv1.conv.weight": (128, 128, 3, 3),
            },
        ),
        (
            "m",
            (288, 384),
            {"head.mlp.1.weight": (256, 108), "head.cls_x.weight": (576, 256), "head.cls_y.weight": (768, 256)},
        ),
        (
            "l",
            (288, 384),
            {
                "head.final_layer.weight": (17, 1024, 7, 7),
                "head.mlp.1.weight": (256, 108),
                "head.cls_x.weight": (576, 256),
            },
        ),
    ],
)
def test_names_and_shapes_of_other_sizes(size, input_size, expected):
    got = shapes(RTMPoseConfig(size=size, input_size=input_size))
    assert {key: got.get(key) for key in expected} == expected


def test_config_derivations_and_refusals():
    m = RTMPoseConfig(size="m")
    assert (m.stem_channels, m.stage_depths, m.feature_channels) == ((24, 24, 48), (2, 4, 4, 2), 768)
    assert m.stage_channels == ((48, 96), (96, 192), (192, 384), (384, 768))
    assert RTMPoseConfig(size="t").stage_depths == (1, 1, 1, 1)  # round(0.501) and round(1.002)
    assert RTMPoseConfig(size="s").stage_depths == (1, 2, 2, 1)
    assert RTMPoseConfig(size="l", input_size=(288, 384)).bins == (576, 768)
    with pytest.raises(ValueError, match="size must be one of t, s, m, l"):
        RTMPoseConfig(size="x")
    with pytest.raises(ValueError, match="multiples of 32"):
        RTMPoseConfig(input_size=(200, 256))


def test_batchnorm_as_syncbn_defaults():
    model = on_meta(RTMPoseConfig(size="t"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-5 and m.momentum == 0.1 for m in norms)


@pytest.mark.parametrize("size, input_size", [("t", (192, 256)), ("s", (192, 256)), ("t", (288, 384))])
def test_forward_shapes(size, input_size):
    model = build_rtmpose(RTMPoseConfig(size=size, input_size=input_size)).eval()
    w, h = input_size
    with torch.no_grad():
        simcc_x, simcc_y = model(torch.randn(2, 3, h, w))
    assert simcc_x.shape == (2, 17, 2 * w) and simcc_y.shape == (2, 17, 2 * h)
    assert torch.isfinite(simcc_x).all() and torch.isfinite(simcc_y).all()


def test_loaded_weights_reproduce_the_output_and_the_output_depends_on_the_image():
    config = RTMPoseConfig(size="t")
    source = build_rtmpose(config).eval()
    source.load_state_dict(seeded_state(source, 0))
    target = build_rtmpose(config).eval()
    load_rtmpose_state_dict(target, source.state_dict())
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = source(images), target(images)
        swapped = target(images.flip(0))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert torch.equal(swapped[0], got[0].flip(0))  # each image of the batch on its own (eval-mode BatchNorm)
    assert (got[0][0] - got[0][1]).abs().max() > 1e-3  # the two images give different outputs


def test_matches_mmpose_on_seeded_weights():
    # MMPose 1.3.2's CSPNeXt + RTMCCHead, built from rtmpose-t_8xb256-420e_coco-256x192.py (SyncBN
    # reverted to BatchNorm), given seeded_state(model, 0) and these images, outputs these values
    # (computed once with MMPose installed; its full outputs equal this module's to the last bit).
    model = build_rtmpose(RTMPoseConfig(size="t")).eval()
    model.load_state_dict(seeded_state(model, 0))
    images = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        simcc_x, simcc_y = model(images)
    mmpose = {
        "x": [-1.7727139, -3.3369339, -1.4713744, -1.1892164, 3.2967472],  # simcc_x[0, ::4, 190]
        "y": [0.2565612, -0.4504401, -0.3330250, 1.7935506, 0.3628451],  # simcc_y[0, ::4, 250]
        "dx": [0.2602010, -0.1416347, 0.0762051, 0.0903916, -0.0399303],  # (simcc_x[0] - simcc_x[1])[::4, 190]
        "dy": [0.0884347, -0.2221629, -0.3382629, 0.2840655, -0.0282079],  # (simcc_y[0] - simcc_y[1])[::4, 250]
    }
    got = {
        "x": simcc_x[0, ::4, 190],
        "y": simcc_y[0, ::4, 250],
        "dx": (simcc_x[0] - simcc_x[1])[::4, 190],
        "dy": (simcc_y[0] - simcc_y[1])[::4, 250],
    }
    for name, values in mmpose.items():
        torch.testing.assert_close(got[name], torch.tensor(values), rtol=0, atol=1e-4, msg=name)


def test_gau_treats_the_joints_as_a_set():
    # No relative position bias nor rotary encoding: permuting the joint tokens permutes the output.
    torch.manual_seed(0)
    gau = GatedAttentionUnit(dims=32, s=16, expansion=2).eval()
    tokens = torch.randn(3, 17, 32)
    order = torch.randperm(17)
    with torch.no_grad():
        assert torch.allclose(gau(tokens[:, order]), gau(tokens)[:, order], atol=1e-6)
        # ... and it is not the identity: the tokens mix.
        assert (gau(tokens) - tokens).abs().max() > 1e-2


def test_wrong_state_dicts_are_refused_with_what_is_wrong():
    model_t = build_rtmpose(RTMPoseConfig(size="t"))
    state_l = on_meta(RTMPoseConfig(size="l")).state_dict()
    expected = r"^rtmpose-l\.pth \(for RTMPose-t 256x192\): does not match the model: "
    expected += r".*unexpected.*wrong shape.*; it looks like RTMPose-l 256x192$"
    with pytest.raises(ValueError, match=expected):
        load_rtmpose_state_dict(model_t, state_l, where="rtmpose-l.pth")

    state_384 = on_meta(RTMPoseConfig(size="t", input_size=(288, 384))).state_dict()
    expected = (
        r": 3 wrong shape \(e\.g\. head\.mlp\.1\.weight \(256, 108\) vs \(256, 48\), .*; "
        r"it looks like RTMPose-t 384x288$"
    )
    with pytest.raises(ValueError, match=expected):
        load_rtmpose_state_dict(model_t, state_384)

    # A checkpoint whose keys lack the "backbone."/"head." prefixes (e.g. the backbone-only
    # CSPNeXt files) or still in the published file's {"meta", "state_dict"} wrapper is refused
    # too, and nothing is half-loaded.
    before = {k: v.clone() for k, v in model_t.state_dict().items()}
    with pytest.raises(ValueError, match="unexpected"):
        load_rtmpose_state_dict(model_t, {k.removeprefix("backbone."): v for k, v in before.items()})
    with pytest.raises(ValueError, match=r"unexpected \(e\.g\. meta, state_dict\)"):
        load_rtmpose_state_dict(model_t, {"meta": {}, "state_dict": before})
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. head\.gau\.gamma\)"):
        load_rtmpose_state_dict(model_t, {k: v for k, v in before.items() if k != "head.gau.gamma"})
    assert all(torch.equal(before[k], v) for k, v in model_t.state_dict().items())
