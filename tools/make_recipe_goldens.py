"""The reference values of every named keypoint recipe, read from the references' own config files.

`tests/test_recipes.py` compares `pose-jobs train-keypoints --recipe NAME --show-recipe` against
`tests/data/goldens/recipes.json`, which this script writes from:

- MMPose 1.3.2's td-hm COCO configs, through mmengine's own `Config.fromfile` (inheritance resolved):
  optimiser, learning rate, `param_scheduler` (warm-up and steps), epochs, `train_dataloader.batch_size` x 8
  GPUs (the `8xbNN` of every config name), `auto_scale_lr.base_batch_size`, the codec (type, sigma, input and
  heatmap size, `unbiased`), `test_cfg` (flip test, shift), the train pipeline's transforms; the transforms'
  argument defaults (`RandomFlip`, `RandomHalfBody`, `RandomBBoxTransform`) are read from MMPose's source by
  `ast`, as the configs leave them at their defaults.
- The Simple Baselines and HRNet releases' yaml files (`experiments/coco/...`) with `yaml.safe_load`, and their
  `get_optimizer` (Adam built with the learning rate only: no weight decay). The global batch is the yaml's
  per-GPU batch x 4 GPUs: HRNet's yamls list GPUS (0,1,2,3); Simple Baselines' yamls say GPUS '0', but the paper
  and README trained the published models on 4 GPUs with a mini-batch of 128.

Scratch environment as in `tools/make_pose_goldens.py` (MMPose unpacked under /tmp/mmref/src, its pure deps in
/tmp/mmdeps, the releases cloned to /tmp/orig/sb and /tmp/orig/hr); from the repo root:

    PYTHONPATH=/tmp/mmdeps:/tmp/mmref/src .venv/bin/python tools/make_recipe_goldens.py
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
MMPOSE_ARCH = {"resnet50": "res50", "resnet101": "res101", "resnet152": "res152", "hrnet-w32": "hrnet-w32", "hrnet-w48": "hrnet-w48"}


def transform_defaults(name: str) -> dict:
    """The keyword defaults of MMPose's transform class `name`'s __init__, read from its source."""
    tree = ast.parse((MMPOSE / "datasets/transforms/common_transforms.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            names = [a.arg for a in init.args.args][-len(init.args.defaults):]
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
    train, dataset, model, test = cfg["TRAIN"], cfg["DATASET"], cfg["MODEL"], cfg["TEST"]
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
    schedulers = []
    for item in cfg.param_scheduler:
        item = dict(item)
        kind = {"LinearLR": LinearLR, "MultiStepLR": MultiStepLR}[item.pop("type")]
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


def main() -> None:
    goldens = {"mmpose-learning-rates": {"config": "td-hm_res50_8xb64-210e_coco-256x192.py", "epoch_length": 4,
                                         "rates": mmpose_learning_rates("td-hm_res50_8xb64-210e_coco-256x192.py", 4)}}
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
    OUT.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"{len(goldens) - 1} recipes and a learning-rate curve -> {OUT}")


if __name__ == "__main__":
    main()
