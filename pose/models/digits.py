"""SVHN digit classifiers: a small wide ResNet, and a small two-conv CNN as a baseline.

Both map (N, 3, 32, 32) float images to (N, 10) logits, class i = digit i (SVHN's label 10 is
already 0 in the `digits` table).

Reference: Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016 (WRN-16-8 reaches 98.4 % on
SVHN). The default here, WRN-10-2, is far lighter so that it trains on a CPU in minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

NUM_CLASSES = 10
ARCHITECTURES = ("wrn", "small-cnn")
RENAMED_ARCHITECTURES = {"seed": "small-cnn"}  # the name older model.json files hold


@dataclass(frozen=True)
class DigitModelConfig:
    arch: str = "wrn"  # "wrn" (wide ResNet) | "small-cnn" (SmallDigitCNN, fixed: ignores the fields below)
    depth: int = 10  # WRN depth 6n + 4: n residual blocks in each of 3 stages (10 → 1, 16 → 2)
    width: int = 2  # WRN widening factor k: stages of 16k, 32k, 64k channels
    dropout: float = 0.0  # between the two convs of each block (the WRN paper uses 0.4 on SVHN)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown digit model arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.arch == "wrn" and (self.depth - 4) % 6 != 0:
            raise ValueError(f"wide ResNet depth must be 6n + 4 (10, 16, 22, 28), got {self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DigitModelConfig:
        """The config of a saved model.json; runs saved before the rename say "seed" for "small-cnn"."""
        values = dict(values)
        values["arch"] = RENAMED_ARCHITECTURES.get(values.get("arch", "wrn"), values.get("arch", "wrn"))
        return cls(**values)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN ReLU Conv3x3 (Dropout) BN ReLU Conv3x3, plus a 1x1 shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        # As in the WRN code, a projected shortcut starts from the pre-activated input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs: Conv3x3(16) → 3 stages (strides 1, 2, 2) → BN ReLU →
    global pool → Linear."""

    def __init__(self, depth: int, width: int, dropout: float, num_classes: int = NUM_CLASSES):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        blocks = []
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(blocks_per_stage):
                cin = channels[stage] if i == 0 else channels[stage + 1]
                blocks.append(WideBasicBlock(cin, channels[stage + 1], stride if i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(images))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallDigitCNN(nn.Module):
    """A plain two-conv baseline: Conv(3→16, 5x5) BN ReLU MaxPool → Conv(16→32, 5x5) BN ReLU
    MaxPool → Linear(800→1000) ReLU Dropout → Linear(1000→10)."""

    def __init__(self, dropout: float = 0.5, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 32 → 28 → 14
            nn.Conv2d(16, 32, 5),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14 → 10 → 5
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 5 * 5, 1000), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(1000, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(images), 1))


def build_digit_model(config: DigitModelConfig = DigitModelConfig()) -> nn.Module:
    """(N, 3, 32, 32) float images → (N, 10) logits."""
    if config.arch == "small-cnn":
        return SmallDigitCNN()
    return WideResNet(config.depth, config.width, config.dropout)
