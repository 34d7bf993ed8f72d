"""RTMPose body models (COCO's 17 joints), laid out module for module as MMPose 1.3.2 builds them.

RTMPose-t/s/m/l = a CSPNeXt-P5 backbone (RTMDet's) whose stride-32 features feed an RTMCC head:
a 7x7 convolution to one map per joint, each map flattened into a token, ScaleNorm + Linear to
256 dims, one gated attention unit (GAU) mixing the joints' tokens, and two linear classifiers
over the x and y bins of the SimCC codec (`split_ratio` bins per input pixel).

The names of every module follow MMPose's (`configs/body_2d_keypoint/rtmpose/coco/
rtmpose-{t,s,m,l}_8xb256-420e_coco-256x192.py`, the 384x288 and the aic-coco / body8 configs of
the same sizes share the layout), so `state_dict()` has exactly the keys and shapes of MMPose's
published checkpoints: `backbone.stem.0.conv.weight`, `backbone.stage4.1.conv1.conv.weight`,
`head.final_layer.weight`, `head.mlp.0.g`, `head.gau.uv.weight`, `head.cls_x.weight`, ...

Input: (N, 3, H, W) float, RGB normalised by MMPose's ImageNet mean and std (the data
preprocessor's, not part of this network). Output: `simcc_x` (N, K, W * split_ratio) and
`simcc_y` (N, K, H * split_ratio), the raw logits MMPose's `RTMCCHead.forward` returns; bin i of
`simcc_x` stands for input x = i / split_ratio (decoding lives with the SimCC codec, not here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pose.models.weights import check_fits

RTMPoseSize = Literal["t", "s", "m", "l"]

# (deepen_factor, widen_factor) of each size, from the configs' CSPNeXt arguments.
SIZE_FACTORS: dict[str, tuple[float, float]] = {
    "t": (0.167, 0.375),
    "s": (0.33, 0.5),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
}

# CSPNeXt-P5 before scaling: per stage (in channels, out channels, CSP blocks, residual blocks, SPP).
P5_STAGES = (
    (64, 128, 3, True, False),
    (128, 256, 6, True, False),
    (256, 512, 6, True, False),
    (512, 1024, 3, False, True),
)

# The configs' norm_cfg is SyncBN with its defaults, i.e. torch's BatchNorm eps and momentum (not
# the 1e-3 / 0.03 that CSPNeXt's own default norm_cfg would give); at inference SyncBN is BatchNorm.
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


@dataclass(frozen=True)
class RTMPoseConfig:
    """One RTMPose body model: its size, its input (w, h) and its joints; everything else derived
    as MMPose's configs derive it (`gau_*` and `final_kernel_size` are the same in every config)."""

    size: RTMPoseSize = "m"
    input_size: tuple[int, int] = (192, 256)  # (w, h) pixels
    num_joints: int = 17
    split_ratio: float = 2.0  # SimCC bins per input pixel
    final_kernel_size: int = 7
    gau_hidden_dims: int = 256
    gau_s: int = 128  # the attention's query/key dims
    gau_expansion: int = 2

    def __post_init__(self):
        if self.size not in SIZE_FACTORS:
            raise ValueError(f"RTMPose size must be one of {', '.join(SIZE_FACTORS)}, got {self.size!r}")
        w, h = self.input_size
        if w % 32 or h % 32:
            # The head flattens the stride-32 map into in_featuremap_size = input // 32 values.
            raise ValueError(f"RTMPose input_size (w, h) must be multiples of 32, got {self.input_size}")

    @property
    def deepen_factor(self) -> float:
        return SIZE_FACTORS[self.size][0]

    @property
    def widen_factor(self) -> float:
        return SIZE_FACTORS[self.size][1]

    @property
    def stem_channels(self) -> tuple[int, int, int]:
        """Output channels of the three stem convolutions."""
        half = int(P5_STAGES[0][0] * self.widen_factor // 2)
        return half, half, int(P5_STAGES[0][0] * self.widen_factor)

    @property
    def stage_channels(self) -> tuple[tuple[int, int], ...]:
        """(in, out) channels of stages 1-4."""
        return tuple((int(cin * self.widen_factor), int(cout * self.widen_factor)) for cin, cout, *_ in P5_STAGES)

    @property
    def stage_depths(self) -> tuple[int, ...]:
        """CSPNeXt blocks in stages 1-4 (Python's round, as CSPNeXt rounds)."""
        return tuple(max(round(blocks * self.deepen_factor), 1) for _, _, blocks, *_ in P5_STAGES)

    @property
    def feature_channels(self) -> int:
        """Channels of the stride-32 features the head reads (t 384, s 512, m 768, l 1024)."""
        return self.stage_channels[-1][1]

    @property
    def feature_size(self) -> tuple[int, int]:
        """(w, h) of the stride-32 feature map."""
        return self.input_size[0] // 32, self.input_size[1] // 32

    @property
    def bins(self) -> tuple[int, int]:
        """(x bins, y bins) of the SimCC output: (384, 512) at 192x256."""
        return int(self.input_size[0] * self.split_ratio), int(self.input_size[1] * self.split_ratio)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> SiLU: mmcv's ConvModule as these configs build it (`conv`, `bn`)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activate = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """A depthwise k x k ConvBN, then a pointwise 1x1 ConvBN (mmcv's DepthwiseSeparableConvModule)."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__()
        self.depthwise_conv = ConvBN(cin, cin, kernel_size, groups=cin)
        self.pointwise_conv = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class CSPNeXtBlock(nn.Module):
    """3x3 ConvBN, then a depthwise-separable 5x5, plus the input when `residual`."""

    def __init__(self, channels: int, residual: bool):
        super().__init__()
        self.conv1 = ConvBN(channels, channels, 3)
        self.conv2 = DepthwiseSeparableConv(channels, channels, 5)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.residual else out


class ChannelAttention(nn.Module):
    """Squeeze-and-excite without the bottleneck: x * hardsigmoid(1x1 conv(global mean of x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class CSPLayer(nn.Module):
    """Cross-stage partial layer: half the channels through `blocks`, half through one 1x1 conv,
    concatenated (blocks' half first), reweighted by channel attention, fused by a 1x1 conv."""

    def __init__(self, channels: int, num_blocks: int, residual: bool):
        super().__init__()
        mid = channels // 2  # expand_ratio 0.5
        self.main_conv = ConvBN(channels, mid, 1)
        self.short_conv = ConvBN(channels, mid, 1)
        self.final_conv = ConvBN(2 * mid, channels, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, residual) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        return self.final_conv(self.attention(both))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 ConvBN to half the channels, concatenated with its 5, 9 and 13
    max-pools (stride 1, same size), 1x1 ConvBN back."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        mid = channels // 2
        self.conv1 = ConvBN(channels, mid, 1)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes])
        self.conv2 = ConvBN(mid * (len(kernel_sizes) + 1), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))


class CSPNeXt(nn.Module):
    """CSPNeXt-P5: a three-conv stem (stride 2), then four stages, each a stride-2 3x3 ConvBN
    [+ SPP in the last] + a CSPLayer. (N, 3, H, W) -> (N, feature_channels, H / 32, W / 32)."""

    def __init__(self, config: RTMPoseConfig):
        super().__init__()
        c1, c2, c3 = config.stem_channels
        self.stem = nn.Sequential(ConvBN(3, c1, 3, stride=2), ConvBN(c1, c2, 3), ConvBN(c2, c3, 3))
        for i, ((cin, cout), depth, (*_, residual, spp)) in enumerate(
            zip(config.stage_channels, config.stage_depths, P5_STAGES)
        ):
            layers = (
                [ConvBN(cin, cout, 3, stride=2)]
                + ([SPPBottleneck(cout)] if spp else [])
                + [CSPLayer(cout, depth, residual)]
            )
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))


class ScaleNorm(nn.Module):
    """x / max(|x| / sqrt(dim), eps) * g over the last axis, g one learned scalar."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    """Elementwise learned scale of the last axis (the GAU's residual branch)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GatedAttentionUnit(nn.Module):
    """MMPose's RTMCCBlock as RTMPose configures it: self-attention over the K joint tokens, no
    relative position bias, no rotary encoding, SiLU, no dropout. (N, K, dims) -> (N, K, dims).

    One projection `uv` gives the gate u (e), the values v (e) and a shared base (s) from which q and
    k are two per-channel affine maps (`gamma`, `beta`); attention weights are relu(q k^T / sqrt(s))^2
    (no softmax); out = res_scale * x + o(u * (weights @ v)).
    """

    def __init__(self, dims: int, s: int, expansion: int):
        super().__init__()
        self.e, self.s = dims * expansion, s
        # Registration order = MMPose's, so state_dict() lists the keys in the published order.
        self.o = nn.Linear(self.e, dims, bias=False)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.ln = ScaleNorm(dims)
        self.res_scale = Scale(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v, base = torch.split(F.silu(self.uv(self.ln(x))), [self.e, self.e, self.s], dim=2)
        q, k = torch.unbind(base.unsqueeze(2) * self.gamma + self.beta, dim=2)  # each (N, K, s)
        weights = torch.square(F.relu(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.s)))  # (N, K, K)
        return self.res_scale(x) + self.o(u * torch.bmm(weights, v))


class RTMCCHead(nn.Module):
    """Stride-32 features (N, C, h, w) -> (simcc_x (N, K, W * split), simcc_y (N, K, H * split))."""

    def __init__(self, config: RTMPoseConfig):
        super().__init__()
        fw, fh = config.feature_size
        k, dims = config.final_kernel_size, config.gau_hidden_dims
        self.final_layer = nn.Conv2d(config.feature_channels, config.num_joints, k, padding=k // 2)
        self.mlp = nn.Sequential(ScaleNorm(fw * fh), nn.Linear(fw * fh, dims, bias=False))
        self.gau = GatedAttentionUnit(dims, config.gau_s, config.gau_expansion)
        bins_x, bins_y = config.bins
        self.cls_x = nn.Linear(dims, bins_x, bias=False)
        self.cls_y = nn.Linear(dims, bins_y, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.gau(self.mlp(torch.flatten(self.final_layer(features), 2)))  # (N, K, dims)
        return self.cls_x(tokens), self.cls_y(tokens)


class RTMPose(nn.Module):
    """`backbone` (CSPNeXt) + `head` (RTMCCHead): (N, 3, H, W) normalised RGB -> (simcc_x, simcc_y)."""

    def __init__(self, config: RTMPoseConfig):
        super().__init__()
        self.config = config
        self.backbone = CSPNeXt(config)
        self.head = RTMCCHead(config)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(images))


def build_rtmpose(config: RTMPoseConfig = RTMPoseConfig()) -> RTMPose:
    """An RTMPose network with PyTorch's default initialisation (meant to receive published weights)."""
    return RTMPose(config)


def load_rtmpose_state_dict(model: RTMPose, state: dict[str, torch.Tensor], where: str = "RTMPose weights") -> None:
    """Load MMPose's RTMPose state_dict (the checkpoint's "state_dict" entry) into `model`.

    Raises ValueError starting with `where` and naming the size and input of `model` unless the keys
    and shapes match exactly (e.g. an RTMPose-l file into an -m model, or 384x288 weights into a
    256x192 one: the head's `mlp.1` and `cls_x/cls_y` shapes differ).
    """
    cfg = model.config
    try:
        check_fits(
            state, model.state_dict(), f"{where} (for RTMPose-{cfg.size} {cfg.input_size[1]}x{cfg.input_size[0]})"
        )
    except ValueError as exc:
        raise ValueError(f"{exc}{_what_it_looks_like(state, cfg.split_ratio)}") from None
    model.load_state_dict(state, strict=True)


def _what_it_looks_like(state: dict, split_ratio: float) -> str:
    """ "; it looks like RTMPose-l 384x288" when the head's shapes name a known size, else ""."""
    final, cls_x, cls_y = (state.get(f"head.{name}.weight") for name in ("final_layer", "cls_x", "cls_y"))
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (final, cls_x, cls_y)):
        return ""
    by_channels = {RTMPoseConfig(size=size).feature_channels: size for size in SIZE_FACTORS}
    size = by_channels.get(final.shape[1])
    if size is None:
        return ""
    return f"; it looks like RTMPose-{size} {round(cls_y.shape[0] / split_ratio)}x{round(cls_x.shape[0] / split_ratio)}"


def load_backbone_checkpoint(model: RTMPose, data: bytes, name: str) -> list[str]:
    """Load the backbone of an MMPose checkpoint file's bytes into `model.backbone`, as the RTMPose configs' backbone
    `init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=...)` does: the keys under `backbone.` with the
    prefix removed (the file's head, e.g. the heatmap head of `cspnext-m_udp-aic-coco_210e-256x192-*.pth`, is
    ignored). Returns the loaded names; raises ValueError naming `name` when the backbone's keys or shapes differ."""
    from pose.checkpoints import CheckpointError, read_checkpoint

    try:
        state, _ = read_checkpoint(data, name)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    backbone = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    cfg = model.config
    where = f"backbone weights {name} (the CSPNeXt of RTMPose-{cfg.size}: an MMPose file with `backbone.*` keys)"
    check_fits(backbone, model.backbone.state_dict(), where, optional=lambda key: key.endswith("num_batches_tracked"))
    model.backbone.load_state_dict(backbone, strict=False)
    return sorted(backbone)


def init_head(model: RTMPose) -> RTMPose:
    """RTMCCHead's own initialisation (`default_init_cfg`), which MMPose applies when training starts: its
    convolution N(0, 0.001) and every Linear in it (the GAU's included) N(0, 0.01), biases 0. The backbone is left
    as built: the configs load it from a checkpoint."""
    for module in model.head.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, std=0.001 if isinstance(module, nn.Conv2d) else 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
