"""The reference values of every named keypoint recipe, read from the references' own config files.

`tests/test_recipes.py` compares `pose-jobs train-keypoints --recipe NAME --show-recipe` against
`tests/data/goldens/recipes.json`, which this script writes from:

- MMPose 1.3.2's td-hm COCO configs, through mmengine's own `Config.fromfile` (inheritance resolved):
  optimiser, learning rate, `param_scheduler` (warm-up and steps), epochs, `train_dataloader.batch_size` x 8
  GPUs (the `8xbNN` of every config name), `auto_scale_lr.base_batch_size`, the codec (type, sigma, input and
  heatmap size, `unbiased`), `test_cfg` (flip test, shift), the train pipeline's transforms; the transforms'
  argument defaults (`RandomFlip`, `RandomHalfBody`, `RandomBBoxTransform`) are read from MMPose's source by
  `ast`, as the configs leave them at their defaults.
- MMPose 1.3.2's `rtmpose/coco/rtmpose-m_8xb256-420e_coco-256x192.py` the same way (optimiser with its
  `paramwise_cfg`, both `param_scheduler` entries, `auto_scale_lr`, the SimCC codec, the head's loss, the EMA and
  pipeline-switch hooks, both train pipelines with their arguments, the backbone's `init_cfg`), and MMPose's own
  RTMPose-m built from that config (`MODELS.build`, SyncBN as BN) given to mmengine's `build_optim_wrapper`: the
  names of the parameters it puts in weight-decay-free groups; the argument defaults of mmdet 3.3.0's
  `YOLOXHSVRandomAug` and albumentations 1.3.1's `Blur`, `MedianBlur`, `CoarseDropout` (their wheels unpacked
  under /tmp/mmref/mmdet and /tmp/mmref/alb), read by `ast`. Also MMPose's `ExpMomentumEMA` stepped on a small
  module (the averaged values after each update) and mmengine's schedulers stepped as for the td-hm curve.
- The Simple Baselines and HRNet releases' yaml files (`experiments/coco/...`) with `yaml.safe_load`, and their
  `get_optimizer` (Adam built with the learning rate only: no weight decay). The global batch is the yaml's
  per-GPU batch x 4 GPUs: HRNet's yamls list GPUS (0,1,2,3); Simple Baselines' yamls say GPUS '0', but the paper
  and README trained the published models on 4 GPUs with a mini-batch of 128.

Scratch environment as in `tools/make_pose_goldens.py` (MMPose unpacked under /tmp/mmref/src, its pure deps in
/tmp/mmdeps, the releases cloned to /tmp/orig/sb and /tmp/orig/hr); from the repo root:

    PYTHONPATH=/tmp/mmdeps:/tmp/mmref/src .venv/bin/python tools/make_recipe_goldens.py

Building MMPose's RTMPose model imports its registry: the import stubs of `tools/make_pose_goldens.py`
(`install_import_stubs`) are installed first.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

MMPOSE = Path("/tmp/mmref/src/mmpose")
CONFIGS = MMPOSE / ".mim/configs/body_2d_keypoint/topdown_heatmap/coco"
RELEASES = {"simple-baselines": Path("/tmp/orig/sb"), "hrnet": Path("/tmp/orig/hr")}
OUT = Path(__file__).resolve().parents[1] / "tests/data/goldens/recipes.json"
MMDET = Path("/tmp/mmref/mmdet/mmdet")  # mmdet 3.3.0's wheel, unpacked: YOLOXHSVRandomAug's defaults
ALBUMENTATIONS = Path("/tmp/mmref/alb/albumentations")  # albumentations 1.3.1's wheel, unpacked
RTMPOSE_M = MMPOSE / ".mim/configs/body_2d_keypoint/rtmpose/coco/rtmpose-m_8xb256-420e_coco-256x192.py"
MMPOSE_ARCH = {
    "resnet50": "res50",
    "resnet101": "res101",
    "resnet152": "res152",
    "hrnet-w32": "hrnet-w32",
    "hrnet-w48": "hrnet-w48",
}


def transform_defaults(
    name: str, source: str = "datasets/transforms/common_transforms.py", root: Path = MMPOSE
) -> dict:
    """The keyword defaults of the __init__ of class `name` in `source` under `root` (MMPose's), read from
    its source."""
    tree = ast.parse((root / source).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            names = [a.arg for a in init.args.args][-len(init.args.defaults) :]
            return {n: ast.literal_eval(d) for n, d in zip(names, init.args.defaults)}
    raise KeyError(name)


def mmpose_values(arch: str, size: str, codec: str) -> dict | None:
    from mmengine.config import Config

    variant = {"msra": "_", "dark": "_dark-", "udp": "_udp-"}[codec]
    matches = [p for p in CONFIGS.glob(f"td-hm_{MMPOSE_ARCH[arch]}{variant}8xb*-210e_coco-{size}.py")]
    if not matches:
        return None
    [path] = matches
    cfg = Config.fromfile(str(path))
    warmup, steps = cfg.param_scheduler
    pipeline = [t["type"] for t in cfg.train_pipeline]
    affine = next(t for t in cfg.train_pipeline if t["type"] == "TopdownAffine")
    return {
        "config": path.name,
        "optimizer": cfg.optim_wrapper.optimizer.type.lower(),
        "lr": cfg.optim_wrapper.optimizer.lr,
        "weight_decay": cfg.optim_wrapper.optimizer.get("weight_decay", 0.0),
        "epochs": cfg.train_cfg.max_epochs,
        "lr_steps": list(steps["milestones"]),
        "lr_gamma": steps["gamma"],
        "warmup_steps": warmup["end"] if not warmup["by_epoch"] else None,
        "warmup_start_factor": warmup["start_factor"],
        "batch_size": 8 * cfg.train_dataloader.batch_size,
        "base_batch_size": cfg.auto_scale_lr.base_batch_size,
        "codec": {"MSRAHeatmap": "dark" if cfg.codec.get("unbiased") else "msra", "UDPHeatmap": "udp"}[cfg.codec.type],
        "sigma": cfg.codec.sigma,
        "input_size": list(cfg.codec.input_size),
        "heatmap_size": list(cfg.codec.heatmap_size),
        "flip_test": cfg.model.test_cfg.flip_test,
        "shift_heatmap": cfg.model.test_cfg.get("shift_heatmap", False),
        "use_udp": affine.get("use_udp", False),
        "pipeline": pipeline,
        "flip": transform_defaults("RandomFlip"),
        "half_body": transform_defaults("RandomHalfBody"),
        "bbox_transform": transform_defaults("RandomBBoxTransform"),
        "pretrained": cfg.model.backbone.init_cfg.checkpoint,
    }


def release_values(framework: str, arch: str, size: str) -> dict:
    root = RELEASES[framework]
    if framework == "simple-baselines":
        path = root / f"experiments/coco/{arch}/{size}_d256x3_adam_lr1e-3.yaml"
    else:
        path = root / f"experiments/coco/hrnet/w{arch.removeprefix('hrnet-w')}_{size}_adam_lr1e-3.yaml"
    cfg = yaml.safe_load(path.read_text())
    train, dataset, model = cfg["TRAIN"], cfg["DATASET"], cfg["MODEL"]
    per_gpu = train.get("BATCH_SIZE", train.get("BATCH_SIZE_PER_GPU"))
    extra = model.get("EXTRA", {})
    return {
        "config": str(path.relative_to(root)),
        "optimizer": train["OPTIMIZER"],
        "lr": train["LR"],
        "weight_decay": 0.0,  # lib/utils/utils.py get_optimizer: optim.Adam(model.parameters(), lr=cfg.TRAIN.LR)
        "epochs": train["END_EPOCH"],
        "lr_steps": train["LR_STEP"],
        "lr_gamma": train["LR_FACTOR"],
        "warmup_steps": 0,
        "batch_size": 4 * per_gpu,
        "sigma": model.get("SIGMA", extra.get("SIGMA")),
        "input_size": model["IMAGE_SIZE"],
        "heatmap_size": model.get("HEATMAP_SIZE", extra.get("HEATMAP_SIZE")),
        "flip": dataset["FLIP"],
        "scale_factor": dataset["SCALE_FACTOR"],
        "rotation_factor": dataset["ROT_FACTOR"],
        "half_body_prob": dataset.get("PROB_HALF_BODY", 0.0),  # Simple Baselines has no half body
        "half_body_joints": dataset.get("NUM_JOINTS_HALF_BODY", 8),
        "color_rgb": dataset.get("COLOR_RGB", False),  # Simple Baselines reads BGR and keeps it
        "pretrained": model["PRETRAINED"],
    }


def mmpose_learning_rates(config: str, epoch_length: int) -> list[float]:
    """The learning rate of every iteration of `config`'s `param_scheduler` as mmengine steps it (its schedulers
    built from the config, by-epoch ones converted to iterations of `epoch_length`), read before each step."""
    import torch
    from mmengine.config import Config
    from mmengine.optim.scheduler import LinearLR, MultiStepLR

    cfg = Config.fromfile(str(CONFIGS / config))
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    return _scheduled_rates(cfg, optimizer, epoch_length, {"LinearLR": LinearLR, "MultiStepLR": MultiStepLR})


def _scheduled_rates(cfg, optimizer, epoch_length: int, kinds: dict) -> list[float]:
    """The learning rate before each iteration of `cfg.train_cfg.max_epochs` epochs of `epoch_length`, with
    `cfg.param_scheduler` built as mmengine's runner builds it (`kinds`: its scheduler classes by type name;
    by-epoch schedulers converted to iterations) and stepped after every optimiser step."""
    schedulers = []
    for item in cfg.param_scheduler:
        item = dict(item)
        kind = kinds[item.pop("type")]
        item.pop("convert_to_iter_based", None)
        if item.pop("by_epoch"):
            schedulers.append(kind.build_iter_from_epoch(optimizer, epoch_length=epoch_length, **item))
        else:
            schedulers.append(kind(optimizer, by_epoch=False, **item))
    rates = []
    for _ in range(cfg.train_cfg.max_epochs * epoch_length):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return rates


def _plain(value):
    """mmengine ConfigDicts, tuples and lists as plain JSON values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def rtmpose_values() -> dict:
    """The rtmpose-m config's training settings as mmengine reads them."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(RTMPOSE_M))
    warmup, cosine = (_plain(s) for s in cfg.param_scheduler)
    ema, switch = (_plain(h) for h in cfg.custom_hooks)
    head = cfg.model.head
    return {
        "config": RTMPOSE_M.name,
        "optimizer": _plain(cfg.optim_wrapper.optimizer),
        "paramwise_cfg": _plain(cfg.optim_wrapper.paramwise_cfg),
        "warmup": warmup,
        "cosine": cosine,
        "epochs": cfg.train_cfg.max_epochs,
        "val_interval": cfg.train_cfg.val_interval,
        "batch_size": 8 * cfg.train_dataloader.batch_size,
        "base_batch_size": cfg.auto_scale_lr.base_batch_size,
        "codec": _plain(cfg.codec),
        "loss": _plain(head.loss),
        "head": {
            "in_channels": head.in_channels,
            "out_channels": head.out_channels,
            "input_size": list(head.input_size),
            "in_featuremap_size": list(head.in_featuremap_size),
            "simcc_split_ratio": head.simcc_split_ratio,
            "final_layer_kernel_size": head.final_layer_kernel_size,
            "gau_cfg": _plain(head.gau_cfg),
        },
        "backbone": {k: _plain(v) for k, v in cfg.model.backbone.items() if k != "init_cfg"},
        "init_cfg": _plain(cfg.model.backbone.init_cfg),
        "flip_test": cfg.model.test_cfg.flip_test,
        "ema_hook": ema,
        "switch_hook": {"type": switch["type"], "switch_epoch": switch["switch_epoch"]},
        "pipeline_stage1": _plain(cfg.train_pipeline),
        "pipeline_stage2": _plain(cfg.train_pipeline_stage2),
        "flip": transform_defaults("RandomFlip"),
        "half_body": transform_defaults("RandomHalfBody"),
        "bbox_transform": transform_defaults("RandomBBoxTransform"),
        "loss_defaults": transform_defaults("KLDiscretLoss", "models/losses/classification_loss.py"),
        "ema_defaults": transform_defaults("ExpMomentumEMA", "engine/hooks/ema_hook.py"),
        "yolox_hsv_defaults": transform_defaults("YOLOXHSVRandomAug", "datasets/transforms/transforms.py", MMDET),
        "blur_defaults": transform_defaults("Blur", "augmentations/blur/transforms.py", ALBUMENTATIONS),
        "median_blur_defaults": transform_defaults("MedianBlur", "augmentations/blur/transforms.py", ALBUMENTATIONS),
        "coarse_dropout_defaults": transform_defaults(
            "CoarseDropout", "augmentations/dropout/coarse_dropout.py", ALBUMENTATIONS
        ),
        "decay_free_parameters": rtmpose_decay_free(cfg),
    }


def rtmpose_decay_free(cfg) -> list[str]:
    """The parameters of MMPose's RTMPose-m that mmengine's optimiser constructor gives weight decay 0."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_pose_goldens import _sync_bn_to_bn, install_import_stubs

    install_import_stubs()
    from mmengine.optim import build_optim_wrapper
    from mmpose.registry import MODELS
    from mmpose.utils import register_all_modules

    register_all_modules()
    model_cfg = cfg.model.copy()
    _sync_bn_to_bn(model_cfg)
    model = MODELS.build(model_cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = wrapper.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == len(names)
    return sorted(names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"])


def rtmpose_learning_rates(epoch_length: int) -> list[float]:
    """Every iteration's learning rate of the rtmpose-m config's `param_scheduler` (LinearLR by iteration, then
    CosineAnnealingLR by epoch converted to iterations, as mmengine's runner builds it)."""
    import torch
    from mmengine.config import Config
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

    cfg = Config.fromfile(str(RTMPOSE_M))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    return _scheduled_rates(
        cfg, optimizer, epoch_length, {"LinearLR": LinearLR, "CosineAnnealingLR": CosineAnnealingLR}
    )


def rtmpose_ema(steps: int = 5) -> dict:
    """MMPose's `ExpMomentumEMA` (the rtmpose-m config's momentum, update_buffers=True) over a Linear + BatchNorm1d
    whose parameters and buffers are set to known values before each update: the averaged state after each."""
    import torch
    from mmengine.config import Config
    from mmpose.engine.hooks.ema_hook import ExpMomentumEMA

    hook = Config.fromfile(str(RTMPOSE_M)).custom_hooks[0]
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ExpMomentumEMA(model, momentum=hook.momentum, update_buffers=hook.update_buffers)
    states, history = [], []
    for step in range(steps):
        with torch.no_grad():
            for i, value in enumerate(model.state_dict().values()):
                if value.is_floating_point():
                    value.copy_(torch.linspace(-1.0, 1.0, value.numel()).reshape(value.shape) * (step + 1) + i)
                else:
                    value.fill_(10 * (step + 1))
        states.append({k: v.tolist() for k, v in model.state_dict().items()})
        ema.update_parameters(model)
        history.append({k: v.tolist() for k, v in ema.module.state_dict().items()})
    return {"momentum": hook.momentum, "sources": states, "averaged": history}


def main() -> None:
    goldens = {
        "mmpose-learning-rates": {
            "config": "td-hm_res50_8xb64-210e_coco-256x192.py",
            "epoch_length": 4,
            "rates": mmpose_learning_rates("td-hm_res50_8xb64-210e_coco-256x192.py", 4),
        }
    }
    for size in ("256x192", "384x288"):
        for arch in ("resnet50", "resnet101", "resnet152"):
            goldens[f"simple-baselines/{arch}/{size}/msra"] = release_values("simple-baselines", arch, size)
        for arch in ("hrnet-w32", "hrnet-w48"):
            goldens[f"{arch}/{arch}/{size}/msra"] = release_values("hrnet", arch, size)
        for arch in MMPOSE_ARCH:
            for codec in ("msra", "dark", "udp"):
                values = mmpose_values(arch, size, codec)
                if values is not None:
                    goldens[f"mmpose-td-hm/{arch}/{size}/{codec}"] = values
    goldens["rtmpose-m/rtmpose-m/256x192/simcc"] = rtmpose_values()
    goldens["rtmpose-learning-rates"] = {
        "config": RTMPOSE_M.name,
        "epoch_length": 5,
        "rates": rtmpose_learning_rates(5),
    }
    goldens["rtmpose-ema"] = rtmpose_ema()
    OUT.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"{len(goldens) - 3} recipes, two learning-rate curves and an EMA run -> {OUT}")


if __name__ == "__main__":
    main()
