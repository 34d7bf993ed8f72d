"""Top-down keypoint models: Simple Baselines (a ResNet with a deconvolution head) and a small baseline CNN.

Both map a normalised person image (N, 3, H, W) to 17 heatmaps (N, 17, H/4, W/4): 256x192 in,
64x48 out. How heatmap pixels map to input pixels is the heatmap codec's business, not the model's.

The Simple Baselines net keeps all four ResNet stages (stride 32) and three deconvolutions. For
training from scratch on a few CPU cores the backbone can be cut after an earlier stage
(`backbone_stages`): after `layer2` it has stride 8, and one deconvolution brings it to stride 4.

Reference: Xiao, Wu, Wei, "Simple Baselines for Human Pose Estimation and Tracking", ECCV 2018.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

from pose.models.weights import check_fits, read_state_dict, weights_name

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
}
# The torchvision ResNet stem and stages, by their state_dict names; avgpool and fc are dropped.
BACKBONE_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class KeypointModelConfig:
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50
    input_size: tuple[int, int] = (192, 256)  # (w, h) of the person image
    num_joints: int = 17
    deconv_channels: int = 256
    deconv_layers: int = 3  # each doubles the resolution: 3 take the backbone's stride 32 to 4
    backbone_stages: int = 4  # ResNet stages kept (layer1..layerN): 4 -> stride 32, 3 -> 16, 2 -> 8
    skips: bool = False  # add each backbone stage at a deconvolution's output stride to it (1x1 conv)

    def __post_init__(self):
        if self.backbone not in RESNETS:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(RESNETS)}")
        if not 1 <= self.backbone_stages <= 4:
            raise ValueError(f"backbone_stages {self.backbone_stages}: a ResNet has stages 1 to 4")
        if self.backbone_stride % 2**self.deconv_layers:
            raise ValueError(
                f"{self.deconv_layers} deconvolutions cannot upsample a stride-{self.backbone_stride} backbone"
            )
        # JSON gives lists back; keep the field a hashable tuple.
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))

    @property
    def backbone_stride(self) -> int:
        """The stem's stride 4, then x2 for every stage after the first."""
        return 2 ** (self.backbone_stages + 1)

    @property
    def output_stride(self) -> int:
        return self.backbone_stride // 2**self.deconv_layers

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(w, h) of the heatmaps for `input_size`."""
        return (self.input_size[0] // self.output_stride, self.input_size[1] // self.output_stride)

    def to_dict(self) -> dict:
        """Plain JSON-ready values, saved next to the weights."""
        return {**asdict(self), "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, values: dict) -> KeypointModelConfig:
        return cls(**values)


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage: those of its last block's last BatchNorm."""
    return [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class KeypointNet(nn.Module):
    """ResNet backbone (stem and `backbone_stages` stages; stride 32 with all four) →
    `deconv_layers` x [ConvTranspose 4x4 s2, BN, ReLU] → 1x1 conv.

    With `skips`, each deconvolution's output gets the backbone stage of the same stride added
    before its BatchNorm, through a 1x1 convolution (a U-Net's lateral path): the heatmaps see the
    deepest stage's context and the earlier stages' detail.

    `backbone` keeps torchvision's layer names (`backbone.conv1.weight`, `backbone.layer1.0.…`) so
    an ImageNet ResNet state_dict loads into it as is (`load_backbone_weights`).
    """

    def __init__(self, config: KeypointModelConfig):
        super().__init__()
        self.config = config
        resnet = RESNETS[config.backbone](weights=None)
        kept = BACKBONE_LAYERS[: 4 + config.backbone_stages]
        self.backbone = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in kept))
        channels = _stage_channels(self.backbone[-1])  # e.g. 512 after layer4 of resnet18/34, 2048 of resnet50
        layers, laterals, self.lateral_sources = [], {}, {}
        for index in range(config.deconv_layers):
            layers += [
                nn.ConvTranspose2d(channels, config.deconv_channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(config.deconv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = config.deconv_channels
            stage = config.backbone_stages - 1 - index  # layerN at stride 2 ** (N + 1); the stem's maxpool is stage 0
            if config.skips and stage >= 1:
                source = self.lateral_sources[str(3 * index)] = f"layer{stage}"
                laterals[str(3 * index)] = nn.Conv2d(
                    _stage_channels(getattr(self.backbone, source)), channels, kernel_size=1, bias=False
                )
        self.deconv = nn.Sequential(*layers)
        # By the index in `deconv` of the deconvolution they join; `lateral_sources`: the stage each reads.
        self.laterals = nn.ModuleDict(laterals)
        self.final = nn.Conv2d(channels, config.num_joints, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W), ImageNet-normalised → heatmaps (N, num_joints, H/4, W/4)."""
        if not self.laterals:
            return self.final(self.deconv(self.backbone(images)))
        stages, x = {}, images
        for name, layer in self.backbone.named_children():
            x = stages[name] = layer(x)
        for index, layer in enumerate(self.deconv):
            x = layer(x)
            if str(index) in self.laterals:
                x = x + self.laterals[str(index)](stages[self.lateral_sources[str(index)]])
        return self.final(x)


def build_keypoint_model(config: KeypointModelConfig = KeypointModelConfig()) -> KeypointNet:
    """A KeypointNet initialised as Simple Baselines: head weights normal(0, 0.001), biases 0,
    BatchNorm (1, 0); the backbone keeps torchvision's initialisation until ImageNet weights are loaded."""
    model = KeypointNet(config)
    for module in [*model.deconv.modules(), model.final]:
        if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def load_backbone_weights(model: KeypointNet | SimpleBaselineNet, path_or_fileobj) -> list[str]:
    """Load an ImageNet torchvision ResNet state_dict file (e.g. `resnet50-0676ba61.pth`) into
    `model.backbone`, ignoring the classifier (`fc.*`). Returns the loaded key names.

    A missing or unreadable file, or one whose keys or shapes do not match the backbone (say resnet34
    weights for a resnet18 model), raises ValueError naming the file and the first mismatches.
    BatchNorm's `num_batches_tracked` counters may be absent, as in older torchvision files.
    """
    arch = model.config.backbone if hasattr(model, "config") else type(model).__name__
    where = f"backbone weights {weights_name(path_or_fileobj)} ({arch})"
    state = read_state_dict(
        path_or_fileobj, where, "a torchvision ResNet state_dict", "torchvision's resnet18-f37072fd.pth"
    )
    kept = tuple(f"{name}." for name in model.backbone._modules)  # a cut backbone ignores the later stages too
    state = {key: value for key, value in state.items() if key.startswith(kept)}
    check_fits(state, model.backbone.state_dict(), where, optional=lambda key: key.endswith("num_batches_tracked"))
    model.backbone.load_state_dict(state, strict=False)
    return sorted(state)


class SimpleBaselineHead(nn.Module):
    """Simple Baselines' head under MMPose's names: `deconv_layers` (3 x [ConvTranspose 4x4 s2
    without bias, BN, ReLU], indices 0, 1, 3, 4, 6, 7 hold weights) and the 1x1 `final_layer`."""

    def __init__(self, in_channels: int, num_joints: int = 17, channels: int = 256):
        super().__init__()
        layers = []
        for _ in range(3):
            layers += [
                nn.ConvTranspose2d(in_channels, channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_joints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(features))


class SimpleBaselineNet(nn.Module):
    """Simple Baselines on a whole torchvision ResNet (`resnet50`, `resnet101`, `resnet152`), with
    the state_dict names of MMPose's published files (`backbone.layer1.0.conv1.weight`,
    `head.deconv_layers.0.weight`, `head.final_layer.weight`): (N, 3, H, W) -> (N, 17, H/4, W/4)."""

    def __init__(self, backbone: str = "resnet50", num_joints: int = 17):
        super().__init__()
        resnet = RESNETS[backbone](weights=None)
        self.backbone = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in BACKBONE_LAYERS))
        self.head = SimpleBaselineHead(_stage_channels(self.backbone.layer4), num_joints)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


class SmallKeypointCNN(nn.Module):
    """A small plain CNN (three strided convolutions, two deconvolutions), kept as a baseline to compare against.

    Conv(3→64, 7x7, s2) BN ReLU MaxPool(s2) → Conv(64→128, 5x5, s2) BN ReLU → Conv(128→256, 5x5, s2)
    BN ReLU → 2 x [ConvTranspose(256, 4x4, s2) BN ReLU] → Conv 1x1 (256→17).
    Stride 2 on both 5x5 convolutions makes a 256x192 input give 64x48 heatmaps (stride 16 down, 4 up:
    output stride 4), as the Simple Baselines net does.
    """

    def __init__(self, num_joints: int = 17):
        super().__init__()

        def conv(cin, cout, kernel, stride):
            return [
                nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        def deconv(cin, cout):
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *conv(3, 64, 7, 2),
            nn.MaxPool2d(3, 2, 1),
            *conv(64, 128, 5, 2),
            *conv(128, 256, 5, 2),
            *deconv(256, 256),
            *deconv(256, 256),
            nn.Conv2d(256, num_joints, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) → heatmaps (N, num_joints, H/4, W/4) for H, W multiples of 16."""
        return self.layers(images)
