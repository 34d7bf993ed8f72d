"""The named keypoint training recipes, each equal to the reference it names, setting for setting.

`keypoint_recipe(name, ...)` resolves a name and the user's choices into a `pose.keypoint_task.KeypointRecipe`:

- "cpu": pose-jobs' CPU recipe (`KeypointRecipe()`), for a few CPU cores and no pretrained weights.
- "simple-baselines": the Simple Baselines release (microsoft/human-pose-estimation.pytorch,
  `experiments/coco/resnet{50,101,152}/{256x192,384x288}_d256x3_adam_lr1e-3.yaml`), trained as the paper did on
  4 GPUs x 32 = a global batch of 128.
- "hrnet-w32", "hrnet-w48": the HRNet release (leoxiaobin/deep-high-resolution-net.pytorch,
  `experiments/coco/hrnet/w{32,48}_{256x192,384x288}_adam_lr1e-3.yaml`, 4 GPUs).
- "mmpose-td-hm": MMPose 1.x's `td-hm_{res50,res101,res152,hrnet-w32,hrnet-w48}[_dark|_udp]-8xbNN-210e_coco-*.py`
  configs (8 GPUs), the codec picked by `codec`.
- "rtmpose-m": MMPose 1.x's `configs/body_2d_keypoint/rtmpose/coco/rtmpose-m_8xb256-420e_coco-256x192.py`
  (8 GPUs x 256): RTMPose-m with SimCC targets, KL loss, AdamW, EMA and two augmentation stages.

docs/recipes.md lists every setting with the reference's value, its file and the test that pins it. The values
here are the references' own; nothing is tuned.
"""

from __future__ import annotations

from dataclasses import replace

from pose.errors import UserError
from pose.keypoint_task import KeypointRecipe

RECIPES = ("cpu", "simple-baselines", "mmpose-td-hm", "hrnet-w32", "hrnet-w48", "rtmpose-m")
SIZES = {"256x192": (192, 256), "384x288": (288, 384)}  # (w, h) by the references' HxW names
SIGMA = {(192, 256): 2.0, (288, 384): 3.0}  # every reference: sigma 2 at 64x48 heatmaps, 3 at 96x72

# MMPose's td-hm configs: images per GPU (8 GPUs) and auto_scale_lr's base_batch_size, by (arch, HxW, codec).
# Read from the config files of MMPose 1.3.2 (`configs/body_2d_keypoint/topdown_heatmap/coco/`).
MMPOSE_BATCH = {
    ("resnet50", "256x192", "msra"): (64, 512),
    ("resnet50", "384x288", "msra"): (64, 512),
    ("resnet50", "256x192", "dark"): (64, 512),
    ("resnet50", "384x288", "dark"): (64, 512),
    ("resnet101", "256x192", "msra"): (64, 512),
    ("resnet101", "384x288", "msra"): (32, 256),
    ("resnet101", "256x192", "dark"): (64, 512),
    ("resnet101", "384x288", "dark"): (64, 512),
    ("resnet152", "256x192", "msra"): (32, 512),
    ("resnet152", "384x288", "msra"): (32, 512),
    ("resnet152", "256x192", "dark"): (32, 256),
    ("resnet152", "384x288", "dark"): (32, 256),
    ("hrnet-w32", "256x192", "msra"): (64, 512),
    ("hrnet-w32", "384x288", "msra"): (64, 512),
    ("hrnet-w32", "256x192", "dark"): (64, 512),
    ("hrnet-w32", "384x288", "dark"): (64, 512),
    ("hrnet-w32", "256x192", "udp"): (64, 512),
    ("hrnet-w32", "384x288", "udp"): (64, 512),
    ("hrnet-w48", "256x192", "msra"): (32, 512),
    ("hrnet-w48", "384x288", "msra"): (32, 512),
    ("hrnet-w48", "256x192", "dark"): (32, 512),
    ("hrnet-w48", "384x288", "dark"): (32, 512),
    ("hrnet-w48", "256x192", "udp"): (32, 512),
    ("hrnet-w48", "384x288", "udp"): (32, 512),
}
# The HRNet release: images per GPU (4 GPUs), by (width, HxW); w48 at 384x288 fits 24.
HRNET_BATCH = {
    ("hrnet-w32", "256x192"): 32,
    ("hrnet-w32", "384x288"): 32,
    ("hrnet-w48", "256x192"): 32,
    ("hrnet-w48", "384x288"): 24,
}

# COCO val2017 keypoint AP with the detector boxes of person AP 56.4 (COCO_val2017_detections_AP_H_56_person.json),
# flip test, as each reference publishes it.
EXPECTED_AP = {
    # the READMEs of microsoft/human-pose-estimation.pytorch and leoxiaobin/deep-high-resolution-net.pytorch
    ("simple-baselines", "resnet50", "256x192", "msra"): 70.4,
    ("simple-baselines", "resnet50", "384x288", "msra"): 72.2,
    ("simple-baselines", "resnet101", "256x192", "msra"): 71.4,
    ("simple-baselines", "resnet101", "384x288", "msra"): 73.6,
    ("simple-baselines", "resnet152", "256x192", "msra"): 72.0,
    ("simple-baselines", "resnet152", "384x288", "msra"): 74.3,
    ("hrnet", "hrnet-w32", "256x192", "msra"): 74.4,
    ("hrnet", "hrnet-w32", "384x288", "msra"): 75.8,
    ("hrnet", "hrnet-w48", "256x192", "msra"): 75.1,
    ("hrnet", "hrnet-w48", "384x288", "msra"): 76.3,
    # MMPose 1.3.2's model index (configs/body_2d_keypoint/topdown_heatmap/coco/{resnet,resnet_dark,hrnet,...}_coco.yml)
    ("mmpose", "resnet50", "256x192", "msra"): 71.8,
    ("mmpose", "resnet50", "384x288", "msra"): 73.1,
    ("mmpose", "resnet101", "256x192", "msra"): 72.8,
    ("mmpose", "resnet101", "384x288", "msra"): 74.9,
    ("mmpose", "resnet152", "256x192", "msra"): 73.6,
    ("mmpose", "resnet152", "384x288", "msra"): 75.0,
    ("mmpose", "resnet50", "256x192", "dark"): 72.4,
    ("mmpose", "resnet50", "384x288", "dark"): 73.5,
    ("mmpose", "resnet101", "256x192", "dark"): 73.3,
    ("mmpose", "resnet101", "384x288", "dark"): 74.9,
    ("mmpose", "resnet152", "256x192", "dark"): 74.3,
    ("mmpose", "resnet152", "384x288", "dark"): 75.7,
    ("mmpose", "hrnet-w32", "256x192", "msra"): 74.6,
    ("mmpose", "hrnet-w32", "384x288", "msra"): 76.0,
    ("mmpose", "hrnet-w32", "256x192", "dark"): 75.7,
    ("mmpose", "hrnet-w32", "384x288", "dark"): 76.6,
    ("mmpose", "hrnet-w32", "256x192", "udp"): 76.2,
    ("mmpose", "hrnet-w32", "384x288", "udp"): 76.8,
    ("mmpose", "hrnet-w48", "256x192", "msra"): 75.6,
    ("mmpose", "hrnet-w48", "384x288", "msra"): 76.7,
    ("mmpose", "hrnet-w48", "256x192", "dark"): 76.4,
    ("mmpose", "hrnet-w48", "384x288", "dark"): 77.2,
    ("mmpose", "hrnet-w48", "256x192", "udp"): 76.8,
    ("mmpose", "hrnet-w48", "384x288", "udp"): 77.3,
    # MMPose 1.3.2's configs/body_2d_keypoint/rtmpose/coco/rtmpose_coco.yml (rtmpose-m_8xb256-420e_coco-256x192)
    ("mmpose", "rtmpose-m", "256x192", "simcc"): 74.6,
}


class RecipeError(UserError, ValueError):
    """A recipe asked for with settings its reference does not have: one line."""


def keypoint_recipe(
    name: str,
    *,
    backbone: str | None = None,
    input_size: str | None = None,
    codec: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> KeypointRecipe:
    """The named recipe (`RECIPES`) for `backbone`, `input_size` ("256x192" | "384x288", HxW) and `codec`
    ("msra" | "dark" | "udp", mmpose-td-hm only), each None for the reference's default; then the user's
    `epochs`, `batch_size` (global: the learning rate follows `KeypointRecipe.with_batch_size`) and `lr`.

    The "cpu" recipe takes any ResNet-18/34/50 backbone and any input size (WxH or HxW multiples of its stride).
    Raises RecipeError for a combination the reference does not publish."""
    if name == "cpu":
        recipe = _cpu(backbone, input_size, codec)
    elif name == "simple-baselines":
        recipe = _simple_baselines(backbone or "resnet50", _size(input_size, name), codec)
    elif name in ("hrnet-w32", "hrnet-w48"):
        if backbone not in (None, name):
            raise RecipeError(f"--recipe {name} trains {name}; --backbone {backbone} belongs to another recipe")
        recipe = _hrnet_release(name, _size(input_size, name), codec)
    elif name == "mmpose-td-hm":
        recipe = _mmpose(backbone or "resnet50", _size(input_size, name), codec or "msra")
    elif name == "rtmpose-m":
        recipe = _rtmpose_m(backbone, input_size, codec)
    else:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if batch_size is not None:
        recipe = recipe.with_batch_size(batch_size)
    changes = {key: value for key, value in {"epochs": epochs, "lr": lr}.items() if value is not None}
    if recipe.rtmpose is not None and epochs is not None:  # the config's cosine runs over the second half of max_epochs
        changes["rtmpose"] = replace(recipe.rtmpose, cosine_begin_epoch=epochs // 2)
    return replace(recipe, **changes)


def expected_ap(recipe: KeypointRecipe) -> float | None:
    """The COCO val2017 AP its reference reports for `recipe` (detected boxes, flip test), or None."""
    w, h = recipe.input_size
    return EXPECTED_AP.get((recipe.framework, recipe.backbone, f"{h}x{w}", recipe.heatmap_codec))


def describe(recipe: KeypointRecipe, workers: int = 1) -> dict:
    """Every resolved setting of `recipe` (`--show-recipe`), with the batch each of `workers` takes and the AP
    its reference reports."""
    from pose.engine import batch_plan

    values = recipe.to_dict()
    try:
        plan = batch_plan(recipe.batch_size, workers, rows=recipe.batch_size)
    except ValueError as error:  # refused as training refuses it
        raise RecipeError(str(error)) from None
    values["worker_batch"], values["workers"] = plan.worker_batch, workers
    values["heatmap_size"] = list(recipe.heatmap_size)
    values["expected_coco_ap"] = expected_ap(recipe)
    if recipe.rtmpose is not None:  # SimCC vectors instead of heatmaps
        for name in ("sigma", "heatmap_size"):
            values.pop(name)
        ratio = recipe.rtmpose.simcc_split_ratio
        values["simcc_bins"] = [round(recipe.input_size[0] * ratio), round(recipe.input_size[1] * ratio)]
    if recipe.framework != "pose-jobs":
        for name in ("backbone_stages", "deconv_layers", "deconv_channels", "skips"):  # the CPU recipe's network only
            values.pop(name)
        values["network"] = recipe.spec().name
        values["crop_centring"] = recipe.crop().centring
    return values


def _size(input_size: str | None, name: str) -> tuple[int, int]:
    key = (input_size or "256x192").lower()
    if key in ("192x256", "288x384"):  # WxH, as --input-size takes it for the cpu recipe
        key = "x".join(reversed(key.split("x")))
    if key not in SIZES:
        raise RecipeError(f"--recipe {name} is published at 256x192 and 384x288 (HxW), not {input_size}")
    return SIZES[key]


def _no_codec(codec: str | None, name: str, own: str) -> None:
    if codec not in (None, own):
        raise RecipeError(f"--recipe {name} uses the {own} codec; --codec {codec} is a choice of --recipe mmpose-td-hm")


def _cpu(backbone: str | None, input_size: str | None, codec: str | None) -> KeypointRecipe:
    _no_codec(codec, "cpu", "pose-jobs")
    recipe = KeypointRecipe()
    if backbone:
        recipe = replace(recipe, backbone=backbone)
    if input_size:
        width, height = (int(v) for v in input_size.lower().split("x"))
        # sigma keeps its size relative to the person as the heatmap grows
        recipe = replace(recipe, input_size=(width, height), sigma=recipe.sigma * width / recipe.input_size[0])
    return recipe


def _simple_baselines(backbone: str, size: tuple[int, int], codec: str | None) -> KeypointRecipe:
    from pose.augment import SIMPLE_BASELINES_AUGMENT

    if backbone not in ("resnet50", "resnet101", "resnet152"):
        raise RecipeError(f"--recipe simple-baselines trains resnet50, resnet101 or resnet152, not {backbone}")
    _no_codec(codec, "simple-baselines", "msra")
    return KeypointRecipe(
        name="simple-baselines",
        framework="simple-baselines",
        backbone=backbone,
        input_size=size,
        sigma=SIGMA[size],
        heatmap_codec="msra",
        bgr=True,  # the release reads images with OpenCV and never converts them to RGB
        epochs=140,
        batch_size=128,
        lr=1e-3,
        optimizer_type="adam",
        weight_decay=0.0,  # Adam is built without WD
        schedule="multistep",
        lr_steps=(90, 120),
        warmup_steps=0,
        backbone_stages=4,
        deconv_layers=3,
        deconv_channels=256,
        flip_test=True,
        augment=SIMPLE_BASELINES_AUGMENT,
    )


def _hrnet_release(arch: str, size: tuple[int, int], codec: str | None) -> KeypointRecipe:
    from pose.augment import HRNET_AUGMENT

    _no_codec(codec, arch, "msra")
    w, h = size
    return KeypointRecipe(
        name=arch,
        framework="hrnet",
        backbone=arch,
        input_size=size,
        sigma=SIGMA[size],
        heatmap_codec="msra",
        bgr=False,
        epochs=210,
        batch_size=4 * HRNET_BATCH[(arch, f"{h}x{w}")],
        lr=1e-3,
        optimizer_type="adam",
        weight_decay=0.0,
        schedule="multistep",
        lr_steps=(170, 200),
        warmup_steps=0,
        backbone_stages=4,
        deconv_layers=0,
        deconv_channels=0,
        flip_test=True,
        augment=HRNET_AUGMENT,
    )


def _mmpose(arch: str, size: tuple[int, int], codec: str) -> KeypointRecipe:
    from pose.augment import MMPoseAugment

    w, h = size
    key = (arch, f"{h}x{w}", codec)
    if key not in MMPOSE_BATCH:
        published = sorted({c for a, _, c in MMPOSE_BATCH if a == arch})
        if not published:
            raise RecipeError(f"--recipe mmpose-td-hm has configs for resnet50/101/152 and hrnet-w32/w48, not {arch}")
        raise RecipeError(f"MMPose has no td-hm {arch} config with the {codec} codec; it has {', '.join(published)}")
    per_gpu, base = MMPOSE_BATCH[key]
    return KeypointRecipe(
        name="mmpose-td-hm",
        framework="mmpose",
        backbone=arch,
        input_size=size,
        sigma=SIGMA[size],
        heatmap_codec=codec,
        epochs=210,
        batch_size=8 * per_gpu,
        base_batch_size=base,
        lr=5e-4,
        optimizer_type="adam",
        weight_decay=0.0,
        schedule="multistep",
        lr_steps=(170, 200),
        warmup_steps=500,
        warmup_start_factor=0.001,
        backbone_stages=4,
        deconv_layers=3 if arch.startswith("resnet") else 0,
        deconv_channels=256 if arch.startswith("resnet") else 0,
        flip_test=True,
        augment=MMPoseAugment(),
    )


def _rtmpose_m(backbone: str | None, input_size: str | None, codec: str | None) -> KeypointRecipe:
    from pose.augment import MMPoseAugment, RTMPosePixelAugment
    from pose.keypoint_task import RTMPoseSettings

    if backbone not in (None, "rtmpose-m"):
        raise RecipeError(f"--recipe rtmpose-m trains RTMPose-m; --backbone {backbone} belongs to another recipe")
    if _size(input_size, "rtmpose-m") != (192, 256):
        raise RecipeError(f"--recipe rtmpose-m is MMPose's COCO config at 256x192 (HxW), not {input_size}")
    _no_codec(codec, "rtmpose-m", "simcc")
    return KeypointRecipe(
        name="rtmpose-m",
        framework="mmpose",
        backbone="rtmpose-m",
        input_size=(192, 256),
        sigma=0.0,
        heatmap_codec="simcc",
        epochs=420,
        batch_size=8 * 256,
        base_batch_size=1024,
        lr=4e-3,
        optimizer_type="adamw",
        weight_decay=0.05,
        schedule="cosine",
        warmup_steps=1000,
        warmup_start_factor=1e-5,
        backbone_stages=0,
        deconv_layers=0,
        deconv_channels=0,
        flip_test=True,
        augment=MMPoseAugment(
            scale_range=(0.6, 1.4), rotate_factor=80.0
        ),  # stage 1: RandomBBoxTransform(scale_factor=[0.6, 1.4], rotate_factor=80)
        rtmpose=RTMPoseSettings(
            stage2_augment=MMPoseAugment(shift_factor=0.0, scale_range=(0.75, 1.25), rotate_factor=60.0),
            pixel_augment=RTMPosePixelAugment(dropout_prob=1.0),
            stage2_pixel_augment=RTMPosePixelAugment(dropout_prob=0.5),
        ),
    )


def detector_recipe(
    arch: str | None = None,
    *,
    fine_tune: bool = False,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    min_size: int | None = None,
):
    """The person detector's `DetectorRecipe` for `arch` (default: fasterrcnn_mobilenet_v3_large_fpn):
    `DetectorRecipe.fine_tune` when training starts from COCO weights, else `from_scratch`; then the
    user's `epochs`, `batch_size`, `lr` and `min_size` (the short side images are resized to; the
    long side's limit keeps its ratio to it), each None for the recipe's. Raises RecipeError for an
    unknown architecture."""
    from pose.detector_task import DetectorRecipe
    from pose.models.detector import ARCHITECTURES

    arch = arch or "fasterrcnn_mobilenet_v3_large_fpn"
    if arch not in ARCHITECTURES:
        raise RecipeError(f"detector architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    recipe = DetectorRecipe.fine_tune(arch) if fine_tune else DetectorRecipe.from_scratch(arch)
    changes = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    if min_size:
        model = recipe.model
        changes["model"] = replace(model, min_size=min_size, max_size=round(min_size * model.max_size / model.min_size))
    return replace(recipe, **changes)
