import json

import pytest
import torch
import torchvision

from pose.models import (
    DigitModelConfig,
    KeypointModelConfig,
    SmallKeypointCNN,
    build_digit_model,
    build_keypoint_model,
    load_backbone_weights,
)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "backbone, millions",
    # Simple Baselines reports 34.0 M parameters for its ResNet-50 256x192 model.
    [("resnet18", 15.4), ("resnet34", 25.5), ("resnet50", 34.0)],
)
def test_keypoint_model_gives_stride_4_heatmaps(backbone, millions):
    torch.manual_seed(0)
    model = build_keypoint_model(KeypointModelConfig(backbone=backbone)).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(1, 3, 256, 192))
    assert heatmaps.shape == (1, 17, 64, 48)
    assert model.config.heatmap_size == (48, 64)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.1)


@pytest.mark.parametrize("stages, deconv_layers, stride", [(2, 1, 4), (3, 2, 4), (2, 2, 2)])
def test_cut_backbone_keeps_early_stages_and_fewer_deconvolutions(stages, deconv_layers, stride):
    config = KeypointModelConfig(
        input_size=(64, 96), backbone_stages=stages, deconv_layers=deconv_layers, deconv_channels=64
    )
    model = build_keypoint_model(config).eval()
    assert list(model.backbone._modules)[-1] == f"layer{stages}"
    assert config.backbone_stride == 2 ** (stages + 1) and config.output_stride == stride
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 64)).shape == (1, 17, 96 // stride, 64 // stride)
    assert config.heatmap_size == (64 // stride, 96 // stride)
    with pytest.raises(ValueError, match="3 deconvolutions cannot upsample a stride-4"):
        KeypointModelConfig(backbone_stages=1, deconv_layers=3)


@pytest.mark.parametrize(
    "stages, deconv_layers, joined", [(2, 1, ["layer1"]), (3, 2, ["layer2", "layer1"]), (4, 2, ["layer3", "layer2"])]
)
def test_skips_add_each_stage_to_the_deconvolution_of_its_stride(stages, deconv_layers, joined):
    config = KeypointModelConfig(
        input_size=(64, 96), backbone_stages=stages, deconv_layers=deconv_layers, deconv_channels=32, skips=True
    )
    model = build_keypoint_model(config).eval()
    channels = {"layer1": 64, "layer2": 128, "layer3": 256}
    assert [lateral.in_channels for lateral in model.laterals.values()] == [channels[name] for name in joined]
    images = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        heatmaps = model(images)
        # Silence a lateral path: the output changes, so the stage really reaches the heatmaps.
        torch.nn.init.zeros_(model.laterals["0"].weight)
        assert not torch.allclose(model(images), heatmaps)
    assert heatmaps.shape == (2, 17, 96 // config.output_stride, 64 // config.output_stride)
    assert KeypointModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # Configurations saved before skips existed load as the plain net.
    old = {k: v for k, v in config.to_dict().items() if k != "skips"}
    assert not build_keypoint_model(KeypointModelConfig.from_dict(old)).laterals


def test_keypoint_head_starts_near_zero_as_simple_baselines():
    model = build_keypoint_model(KeypointModelConfig())
    assert model.final.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert model.final.bias.abs().max().item() == 0.0
    assert model.deconv[0].weight.std().item() == pytest.approx(0.001, rel=0.2)


def test_seed_keypoint_model_gives_64x48_heatmaps_for_256x192():
    model = SmallKeypointCNN().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 192)).shape == (2, 17, 64, 48)
    assert 2e6 < count_parameters(model) < 5e6


def test_keypoint_config_round_trips_through_json():
    config = KeypointModelConfig(backbone="resnet34", input_size=(96, 128), deconv_channels=128)
    assert KeypointModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="resnet200"):
        KeypointModelConfig(backbone="resnet200")


def test_saved_keypoint_weights_reload_to_identical_outputs(tmp_path):
    config = KeypointModelConfig(input_size=(96, 128))
    model = build_keypoint_model(config).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh = build_keypoint_model(KeypointModelConfig.from_dict(config.to_dict())).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    images = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)


def test_backbone_loads_a_torchvision_resnet_state_dict(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(resnet.state_dict(), path)
    model = build_keypoint_model(KeypointModelConfig(backbone="resnet18"))
    head_before = model.final.weight.clone()
    loaded = load_backbone_weights(model, path)
    assert "conv1.weight" in loaded and "layer4.1.bn2.running_var" in loaded
    assert not any(key.startswith("fc.") for key in loaded)
    torch.testing.assert_close(model.backbone.conv1.weight, resnet.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    torch.testing.assert_close(model.final.weight, head_before)
    # Older torchvision files have no BatchNorm `num_batches_tracked`; they load too, from a file object.
    state = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    with open(path, "rb") as f:
        assert len(load_backbone_weights(model, f)) == len(state) - 2  # fc.weight, fc.bias ignored


def test_cut_backbone_loads_the_stages_it_keeps(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(resnet.state_dict(), path)
    model = build_keypoint_model(KeypointModelConfig(backbone_stages=2, deconv_layers=1, deconv_channels=64))
    loaded = load_backbone_weights(model, path)
    assert "layer2.1.bn2.running_var" in loaded and not any(
        key.startswith(("layer3.", "layer4.", "fc.")) for key in loaded
    )
    torch.testing.assert_close(model.backbone.layer2[1].conv2.weight, resnet.layer2[1].conv2.weight)


def test_backbone_rejects_wrong_or_missing_files_naming_them(tmp_path):
    model = build_keypoint_model(KeypointModelConfig(backbone="resnet18"))
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"resnet34\.pth.*unexpected.*layer1\.2\."):
        load_backbone_weights(model, wrong)

    random = tmp_path / "random.pth"
    torch.save({"conv1.weight": torch.randn(3, 3)}, random)
    with pytest.raises(ValueError, match=r"random\.pth.*missing.*wrong shape.*conv1\.weight"):
        load_backbone_weights(model, random)

    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.txt.*not a readable torch state_dict"):
        load_backbone_weights(model, not_torch)

    with pytest.raises(ValueError, match=r"nowhere\.pth.*no such file"):
        load_backbone_weights(model, tmp_path / "nowhere.pth")


@pytest.mark.parametrize(
    "config, millions",
    [
        (DigitModelConfig(), 0.30),  # WRN-10-2
        (DigitModelConfig(depth=16, width=4, dropout=0.3), 2.75),  # WRN-16-4: 2.7 M in the WRN paper
        (DigitModelConfig(arch="small-cnn"), 0.83),
    ],
    ids=["wrn-10-2", "wrn-16-4", "small-cnn"],
)
def test_digit_models_give_ten_logits(config, millions):
    model = build_digit_model(config).eval()
    with torch.no_grad():
        assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.01)


def test_digit_config_round_trips_and_checks_depth():
    config = DigitModelConfig(depth=16, width=4, dropout=0.3)
    assert DigitModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="6n"):
        DigitModelConfig(depth=12)


def test_digit_config_reads_the_old_name_of_the_small_cnn():
    """A model.json written when the small CNN was called "seed" still loads, as "small-cnn"."""
    saved = {"arch": "seed", "depth": 10, "width": 2, "dropout": 0.0}
    assert DigitModelConfig.from_dict(saved).arch == "small-cnn"
    assert saved["arch"] == "seed"  # the caller's dict is left as it was
    with pytest.raises(ValueError, match="unknown digit model arch 'seed'"):
        DigitModelConfig(arch="seed")


def test_saved_digit_weights_reload_to_identical_outputs(tmp_path):
    model = build_digit_model(DigitModelConfig()).eval()
    torch.save(model.state_dict(), tmp_path / "digits.pt")
    fresh = build_digit_model(DigitModelConfig()).eval()
    fresh.load_state_dict(torch.load(tmp_path / "digits.pt", weights_only=True))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)


def test_wide_resnet_learns_a_small_batch():
    torch.manual_seed(0)
    model = build_digit_model(DigitModelConfig())
    images, labels = torch.randn(10, 3, 16, 16), torch.arange(10)  # small: the global pool takes any size
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5
