"""HRNet-W32/W48 top-down heatmap networks, laid out module for module as MMPose 1.x builds them.

The network of MMPose's `td-hm_hrnet-w{32,48}_8xb64-210e_coco-256x192` configs: the `HRNet`
backbone with the configs' `extra` (a stem of two stride-2 3x3 convs; stage 1 = four Bottlenecks
at stride 4; stages 2, 3, 4 of 1, 4, 3 modules with 2, 3, 4 branches at strides 4, 8, 16, 32, four
BasicBlocks per branch, channels width x (1, 2, 4, 8)), then `HeatmapHead` with no deconvolutions:
a 1x1 conv from the stride-4 branch to the joints' heatmaps.

    normalised image (N, 3, H, W) -> heatmaps (N, num_joints, H/4, W/4), H and W multiples of 32

`state_dict()` has exactly the keys, shapes and order of MMPose's published checkpoints
(`backbone.conv1.weight`, ..., `backbone.stage4.2.fuse_layers.0.3.0.weight`, ...,
`head.final_layer.weight`), so they load with `load_state_dict` as they are. The original release
(leoxiaobin/deep-high-resolution-net.pytorch, `pose_hrnet_w32_256x192.pth`) builds the same modules
under the same names without the `backbone.` / `head.` prefixes: `hrnet_keys_from_release` renames.
Input normalisation, channel order and decoding are the caller's (`pose.topdown.PoseModel`).

Reference: Sun, Xiao, Liu, Wang, "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from pose.models.weights import check_fits

# The COCO configs' `extra`, shared by W32 and W48: modules per stage (stages 2, 3, 4; stage n has
# n branches) and blocks per branch. Stage 1 is four Bottlenecks of 64 -> 256 channels.
STAGE_MODULES = (1, 4, 3)
BLOCKS_PER_BRANCH = 4
STEM_CHANNELS = 64
STAGE1_CHANNELS = 256  # 64 x Bottleneck's expansion 4
WIDTHS = (32, 48)
# The widest stride: every branch's size must halve exactly, or the fused maps do not line up.
INPUT_MULTIPLE = 32


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, relu: bool) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm [-> ReLU]: state_dict keys `0.weight`, `1.*`."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def _blocks(block: type[BasicBlock | Bottleneck], in_channels: int, planes: int, count: int) -> nn.Sequential:
    """`count` residual blocks (torchvision's BasicBlock/Bottleneck have MMPose's and the release's
    names: conv1, bn1, ..., downsample.0/1); the first gets a 1x1 projection if channels change."""
    out_channels = planes * block.expansion
    downsample = _conv_bn(in_channels, out_channels, 1, 1, relu=False) if in_channels != out_channels else None
    layers = [block(in_channels, planes, downsample=downsample)]
    layers += [block(out_channels, planes) for _ in range(1, count)]
    return nn.Sequential(*layers)


def _downsampler(in_channels: int, out_channels: int, steps: int, last_relu: bool) -> nn.Sequential:
    """`steps` stride-2 3x3 conv+BN(+ReLU) layers: the first steps - 1 keep `in_channels` (with
    ReLU), the last one maps to `out_channels` (ReLU only if `last_relu`)."""
    layers = [_conv_bn(in_channels, in_channels, 3, 2, relu=True) for _ in range(steps - 1)]
    return nn.Sequential(*layers, _conv_bn(in_channels, out_channels, 3, 2, relu=last_relu))


class HRModule(nn.Module):
    """One exchange unit: every branch runs its blocks, then each output branch i sums all branches
    brought to its resolution and width (j > i: 1x1 conv+BN then nearest upsampling by 2^(j-i);
    j < i: i-j stride-2 3x3 convs), followed by ReLU.

    With `all_outputs=False` (the last module of stage 4) only the stride-4 branch is fused and returned.
    """

    def __init__(self, channels: tuple[int, ...], all_outputs: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(_blocks(BasicBlock, c, c, BLOCKS_PER_BRANCH) for c in channels)
        fuse_layers = []
        for i in range(len(channels) if all_outputs else 1):
            row = []
            for j in range(len(channels)):
                if j > i:
                    row.append(
                        nn.Sequential(
                            *_conv_bn(channels[j], channels[i], 1, 1, relu=False),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)  # the branch itself; None keeps MMPose's indices in the keys
                else:
                    row.append(_downsampler(channels[j], channels[i], i - j, last_relu=False))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: one (N, C_b, H_b, W_b) map per branch, stride doubling from branch to branch."""
        features = [branch(x) for branch, x in zip(self.branches, features)]
        fused = []
        for row in self.fuse_layers:
            # Summed in branch order, as MMPose and the release do: float32 sums are not associative.
            total = row[0](features[0]) if row[0] is not None else features[0]
            for layer, x in zip(row[1:], features[1:]):
                total = total + (layer(x) if layer is not None else x)
            fused.append(self.relu(total))
        return fused


class HRNetBackbone(nn.Module):
    """MMPose's `HRNet` backbone: image (N, 3, H, W) -> the stride-4 map (N, width, H/4, W/4).

    `transition{1,2,3}[i]` turns the previous stage's branch i into this stage's (a 3x3 conv where
    channels change, None where they do not) and makes the new, coarsest branch from the previous
    coarsest one with a stride-2 3x3 conv.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _blocks(Bottleneck, STEM_CHANNELS, STEM_CHANNELS, BLOCKS_PER_BRANCH)
        previous = (STAGE1_CHANNELS,)
        for stage, modules in enumerate(STAGE_MODULES, start=2):
            channels = tuple(width * 2**b for b in range(stage))
            self.add_module(f"transition{stage - 1}", self._transition(previous, channels))
            last_stage = stage == len(STAGE_MODULES) + 1
            units = [HRModule(channels, all_outputs=not (last_stage and m == modules - 1)) for m in range(modules)]
            self.add_module(f"stage{stage}", nn.Sequential(*units))
            previous = channels

    @staticmethod
    def _transition(previous: tuple[int, ...], channels: tuple[int, ...]) -> nn.ModuleList:
        layers = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(_conv_bn(previous[i], c, 3, 1, relu=True) if previous[i] != c else None)
            else:  # a new branch: MMPose would chain several convs if a stage added more than one
                layers.append(_downsampler(previous[-1], c, i + 1 - len(previous), last_relu=True))
        return nn.ModuleList(layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(images))))))
        features = [self.layer1(x)]
        for stage in range(2, len(STAGE_MODULES) + 2):
            transition = getattr(self, f"transition{stage - 1}")
            # Existing branches pass through (or through their conv); the new one comes from the coarsest.
            features = [
                (layer(features[min(i, len(features) - 1)]) if layer is not None else features[i])
                for i, layer in enumerate(transition)
            ]
            features = getattr(self, f"stage{stage}")(features)
        return features[0]


class HeatmapHead(nn.Module):
    """MMPose's `HeatmapHead` without deconvolutions or extra convs: a 1x1 conv (with bias)."""

    def __init__(self, in_channels: int, num_joints: int):
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_joints, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(features)


class HRNetPose(nn.Module):
    """HRNet-W`width` + heatmap head: normalised images (N, 3, H, W), H and W multiples of 32 ->
    heatmaps (N, num_joints, H/4, W/4); 256x192 in, 64x48 out."""

    def __init__(self, width: int = 32, num_joints: int = 17):
        super().__init__()
        self.width, self.num_joints = width, num_joints
        self.backbone = HRNetBackbone(width)
        self.head = HeatmapHead(width, num_joints)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
            raise ValueError(
                f"HRNet input {height}x{width}: height and width must be multiples of {INPUT_MULTIPLE} "
                "(its coarsest branch is at stride 32), e.g. 256x192 or 384x288"
            )
        return self.head(self.backbone(images))


def build_hrnet(width: int = 32, num_joints: int = 17) -> HRNetPose:
    """HRNet-W32 or -W48 with a `num_joints` heatmap head (COCO: 17), laid out as MMPose's published
    checkpoints; weights as torch initialises them (load a checkpoint's `state_dict` before use)."""
    if width not in WIDTHS:
        raise ValueError(f"HRNet width {width}: the published models are W32 and W48")
    return HRNetPose(width, num_joints)


def hrnet_keys_from_release(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict of the original HRNet release (`pose_hrnet_w{32,48}_*.pth`: `conv1.weight`,
    `stage4.2.fuse_layers.0.3.0.weight`, `final_layer.weight`, ...) -> the same tensors under
    `HRNetPose`'s keys (`backbone.conv1.weight`, ..., `head.final_layer.weight`).

    The release's modules are MMPose's, name for name: only the prefixes differ. A `module.` prefix
    (a DataParallel state_dict) is dropped; `num_batches_tracked` counters may be absent (files from
    before PyTorch 0.4.1 lack them; eval-mode BatchNorm does not read them) and are then set to 0.
    Anything else that does not map onto HRNet-W32/W48 raises ValueError naming the first mismatches.
    """
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    final = state.get("final_layer.weight")
    if final is None or final.dim() != 4:
        raise ValueError(
            "not an HRNet release state_dict: no 4-d final_layer.weight "
            f"(first keys: {', '.join(list(state)[:3]) or 'none'})"
        )
    width, num_joints = int(final.shape[1]), int(final.shape[0])
    if width not in WIDTHS:  # e.g. 256: a Simple Baselines release, whose head follows deconvolutions
        raise ValueError(
            f"not an HRNet-W32/W48 release state_dict: final_layer.weight takes {width} channels, not 32 or 48"
        )
    renamed = {
        ("head." if key.startswith("final_layer.") else "backbone.") + key: value for key, value in state.items()
    }
    with torch.device("meta"):  # only the keys and shapes are needed
        expected = HRNetPose(width, num_joints).state_dict()
    check_fits(
        renamed,
        expected,
        f"HRNet-W{width} release state_dict",
        optional=lambda key: key.endswith("num_batches_tracked"),
    )
    return {key: renamed[key] if key in renamed else torch.zeros((), dtype=torch.long) for key in expected}


# Modules of the ImageNet HRNet classifier that the pose network does not have.
_CLASSIFIER_ONLY = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def load_imagenet_hrnet(model: HRNetPose, path_or_fileobj) -> list[str]:
    """Load an ImageNet HRNet classifier state_dict (`hrnet_w32-36af842e.pth`, `hrnet_w48-8ef0771d.pth`: the files
    the HRNet release and MMPose start their pose training from) into `model.backbone`.

    Its stem, stages and transitions carry the backbone's own names (`conv1.weight`, `stage4.2.fuse_layers...`);
    the classifier's heads (`incre_modules`, `downsamp_modules`, `final_layer`, `classifier`) are dropped, as
    MMPose's non-strict load drops them. Any other difference raises ValueError. Returns the loaded keys."""
    from pose.models.weights import check_fits, read_state_dict, weights_name

    where = f"HRNet ImageNet weights {weights_name(path_or_fileobj)} (hrnet-w{model.width})"
    state = read_state_dict(path_or_fileobj, where, "an ImageNet HRNet state_dict", "hrnet_w32-36af842e.pth")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith(_CLASSIFIER_ONLY)}
    check_fits(state, model.backbone.state_dict(), where, optional=lambda key: key.endswith("num_batches_tracked"))
    model.backbone.load_state_dict(state, strict=False)
    return sorted(state)
