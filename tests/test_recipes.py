"""The named keypoint recipes against their references' own config files (tests/data/goldens/recipes.json,
written by tools/make_recipe_goldens.py from MMPose's configs and the releases' yaml files), through
`pose-jobs train-keypoints --show-recipe`; and the cluster paths train a reference recipe."""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from pose.geometry import box_to_center_size
from pose.heatmaps import HeatmapCodec
from pose.keypoint_task import KeypointEvaluator, KeypointRecipe, KeypointTask, person_in_image
from pose.metrics import coco_keypoint_ap
from pose.recipes import RecipeError, keypoint_recipe

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = json.loads((ROOT / "tests/data/goldens/recipes.json").read_text())


def show(*args: str) -> dict:
    result = CliRunner().invoke(app, ["train-keypoints", *args, "--show-recipe"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def assert_box_transform_is_the_reference(augment: dict, box: dict) -> None:
    """A recipe's box jitter (`--show-recipe`'s augment) against the reference config's (shift, scale, rotation)."""
    names = ("shift_factor", "shift_prob", "scale_range", "scale_prob", "rotate_factor", "rotate_prob")
    reference = ("shift_factor", "shift_prob", "scale_factor", "scale_prob", "rotate_factor", "rotate_prob")
    ours = [list(augment[n]) if n == "scale_range" else augment[n] for n in names]
    theirs = [list(box[n]) if n == "scale_factor" else box[n] for n in reference]
    assert ours == theirs


@pytest.mark.parametrize("key", sorted(key for key in GOLDENS if key.count("/") == 3 and not key.startswith("rtmpose")))
def test_show_recipe_equals_the_reference_config(key):
    name, arch, size, codec = key.split("/")
    reference = GOLDENS[key]
    args = ["--recipe", name, "--input-size", size]
    if name in ("simple-baselines", "mmpose-td-hm"):
        args += ["--backbone", arch]
    if name == "mmpose-td-hm":
        args += ["--codec", codec]
    shown = show(*args)
    assert shown["optimizer_type"] == reference["optimizer"]
    assert shown["lr"] == pytest.approx(reference["lr"]) and shown["weight_decay"] == reference["weight_decay"]
    assert shown["epochs"] == reference["epochs"] and shown["lr_steps"] == reference["lr_steps"]
    assert shown["schedule"] == "multistep" and reference["lr_gamma"] == 0.1
    assert shown["warmup_steps"] == reference["warmup_steps"]
    assert shown["batch_size"] == reference["batch_size"]
    assert shown["sigma"] == reference["sigma"]
    assert shown["input_size"] == reference["input_size"] and shown["heatmap_size"] == reference["heatmap_size"]
    assert shown["flip_test"] is True
    augment = shown["augment"]
    if name == "mmpose-td-hm":
        assert shown["warmup_start_factor"] == reference["warmup_start_factor"]
        assert shown["base_batch_size"] == reference["base_batch_size"]
        assert shown["heatmap_codec"] == reference["codec"] == codec
        assert shown["crop_centring"] == ("udp" if reference["use_udp"] else "mmpose")
        assert reference["pipeline"][2:5] == ["RandomFlip", "RandomHalfBody", "RandomBBoxTransform"]  # no colour jitter
        assert augment["kind"] == "mmpose"
        half, box = reference["half_body"], reference["bbox_transform"]
        assert augment["flip_prob"] == reference["flip"]["prob"]
        assert (
            augment["half_body_prob"],
            augment["half_body_min_total"],
            augment["half_body_min_upper"],
            augment["half_body_min_lower"],
            augment["half_body_upper_prob"],
            augment["half_body_padding"],
        ) == (
            half["prob"],
            half["min_total_keypoints"],
            half["min_upper_keypoints"],
            half["min_lower_keypoints"],
            half["upper_prioritized_prob"],
            half["padding"],
        )
        assert_box_transform_is_the_reference(augment, box)
        assert shown["bgr"] is False
    else:
        assert shown["heatmap_codec"] == "msra" and shown["crop_centring"] == "release"
        assert augment["kind"] == "release"
        assert (augment["scale_factor"], augment["rotation_factor"], augment["flip"]) == (
            reference["scale_factor"],
            reference["rotation_factor"],
            reference["flip"],
        )
        assert (augment["half_body_prob"], augment["half_body_joints"]) == (
            reference["half_body_prob"],
            reference["half_body_joints"],
        )
        assert shown["bgr"] is (not reference["color_rgb"])


def _stepped_rates(recipe, optimizer_class, reference: dict) -> list[float]:
    """The learning rate of each of the reference's iterations, as the recipe's scheduler steps it."""
    optimizer = optimizer_class([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    scheduler = recipe.scheduler(optimizer, steps_per_epoch=reference["epoch_length"])
    rates = []
    for _ in reference["rates"]:
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_mmpose_schedule_equals_mmengines_warm_up_and_steps():
    """Warm-up LinearLR over 500 iterations and MultiStepLR at epochs 170 and 200, as mmengine steps them from
    the config (tools/make_recipe_goldens.py), here with 4 iterations per epoch."""
    reference = GOLDENS["mmpose-learning-rates"]
    recipe = keypoint_recipe("mmpose-td-hm")
    assert _stepped_rates(recipe, torch.optim.Adam, reference) == pytest.approx(reference["rates"], rel=1e-9)


def _bbox_transform(step: dict, defaults: dict) -> dict:
    return {**defaults, **{k: v for k, v in step.items() if k != "type"}}


def test_rtmpose_m_shows_the_reference_config():
    """`--recipe rtmpose-m --show-recipe` against MMPose's rtmpose-m_8xb256-420e_coco-256x192.py as mmengine
    reads it."""
    reference = GOLDENS["rtmpose-m/rtmpose-m/256x192/simcc"]
    shown = show("--recipe", "rtmpose-m", "--workers", "8")
    settings = shown["rtmpose"]
    optimizer, paramwise = reference["optimizer"], reference["paramwise_cfg"]
    assert (shown["optimizer_type"], shown["lr"], shown["weight_decay"]) == (
        optimizer["type"].lower(),
        optimizer["lr"],
        optimizer["weight_decay"],
    )
    assert (settings["norm_decay_mult"], settings["bias_decay_mult"], paramwise["bypass_duplicate"]) == (
        paramwise["norm_decay_mult"],
        paramwise["bias_decay_mult"],
        True,
    )
    warmup, cosine = reference["warmup"], reference["cosine"]
    assert (warmup["type"], warmup["by_epoch"], warmup["begin"]) == ("LinearLR", False, 0)
    assert (shown["warmup_steps"], shown["warmup_start_factor"]) == (warmup["end"], warmup["start_factor"])
    assert (cosine["type"], cosine["by_epoch"], cosine["convert_to_iter_based"]) == ("CosineAnnealingLR", True, True)
    assert (
        settings["cosine_begin_epoch"],
        shown["epochs"],
        shown["epochs"] - settings["cosine_begin_epoch"],
        settings["eta_min"],
    ) == (cosine["begin"], cosine["end"], cosine["T_max"], cosine["eta_min"])
    assert shown["epochs"] == reference["epochs"] and shown["schedule"] == "cosine"
    assert (shown["batch_size"], shown["worker_batch"], shown["base_batch_size"]) == (
        reference["batch_size"],
        256,
        reference["base_batch_size"],
    )
    codec = reference["codec"]
    assert (codec["type"], codec["normalize"], codec["use_dark"]) == ("SimCCLabel", False, False)
    assert (shown["heatmap_codec"], shown["input_size"], settings["simcc_sigma"], settings["simcc_split_ratio"]) == (
        "simcc",
        codec["input_size"],
        codec["sigma"],
        codec["simcc_split_ratio"],
    )
    assert shown["simcc_bins"] == [round(v * codec["simcc_split_ratio"]) for v in codec["input_size"]]
    loss = {**reference["loss_defaults"], **reference["loss"]}
    assert (loss["type"], loss["use_target_weight"], loss["mask"]) == ("KLDiscretLoss", True, None)
    assert (settings["kl_beta"], settings["label_softmax"], settings["label_beta"]) == (
        loss["beta"],
        loss["label_softmax"],
        loss["label_beta"],
    )
    ema = reference["ema_hook"]
    assert (ema["type"], ema["ema_type"], ema["update_buffers"]) == ("EMAHook", "ExpMomentumEMA", True)
    assert (settings["ema_momentum"], settings["ema_gamma"]) == (ema["momentum"], reference["ema_defaults"]["gamma"])
    assert shown["epochs"] - settings["stage2_epochs"] == reference["switch_hook"]["switch_epoch"]
    init = reference["init_cfg"]
    assert (init["type"], init["prefix"], init["checkpoint"].rsplit("/", 1)[1]) == (
        "Pretrained",
        "backbone.",
        settings["backbone_checkpoint"],
    )
    assert (shown["network"], shown["crop_centring"], shown["flip_test"], shown["bgr"]) == (
        "mmpose rtmpose-m 256x192 simcc",
        "mmpose",
        reference["flip_test"],
        False,
    )
    assert (
        reference["head"]["in_channels"] == 768 and reference["backbone"]["widen_factor"] == 0.75
    )  # RTMPose-m (pose.models.rtmpose)
    assert shown["expected_coco_ap"] == 74.6
    # the geometric steps of both stages: RandomFlip, RandomHalfBody and RandomBBoxTransform with their arguments
    for augment, pipeline in (
        (shown["augment"], reference["pipeline_stage1"]),
        (settings["stage2_augment"], reference["pipeline_stage2"]),
    ):
        steps = {step["type"]: step for step in pipeline}
        half, box = (
            {**reference["half_body"], **steps["RandomHalfBody"]},
            _bbox_transform(steps["RandomBBoxTransform"], reference["bbox_transform"]),
        )
        assert augment["kind"] == "mmpose" and augment["flip_prob"] == reference["flip"]["prob"]
        assert (
            augment["half_body_prob"],
            augment["half_body_min_total"],
            augment["half_body_upper_prob"],
            augment["half_body_padding"],
        ) == (half["prob"], half["min_total_keypoints"], half["upper_prioritized_prob"], half["padding"])
        assert_box_transform_is_the_reference(augment, box)
    # the pixel steps after TopdownAffine: YOLOXHSVRandomAug, then albumentations' Blur, MedianBlur, CoarseDropout
    for pixels, pipeline in (
        (settings["pixel_augment"], reference["pipeline_stage1"]),
        (settings["stage2_pixel_augment"], reference["pipeline_stage2"]),
    ):
        types = [step["type"] for step in pipeline]
        assert types[types.index("TopdownAffine") + 1 :] == [
            "mmdet.YOLOXHSVRandomAug",
            "Albumentation",
            "GenerateTarget",
            "PackPoseInputs",
        ]
        hsv = {
            **reference["yolox_hsv_defaults"],
            **{k: v for k, v in pipeline[types.index("mmdet.YOLOXHSVRandomAug")].items() if k != "type"},
        }
        assert (pixels["hue_delta"], pixels["saturation_delta"], pixels["value_delta"]) == (
            hsv["hue_delta"],
            hsv["saturation_delta"],
            hsv["value_delta"],
        )
        blur, median, dropout = pipeline[types.index("Albumentation")]["transforms"]
        blur, median = {**reference["blur_defaults"], **blur}, {**reference["median_blur_defaults"], **median}
        dropout = {**reference["coarse_dropout_defaults"], **dropout}
        assert (blur["type"], median["type"], dropout["type"]) == ("Blur", "MedianBlur", "CoarseDropout")
        odd = list(range(3, blur["blur_limit"] + 1, 2))  # albumentations' to_tuple(7, 3): odd kernels 3..7
        assert (pixels["blur_prob"], pixels["blur_kernels"], pixels["median_prob"], pixels["median_kernels"]) == (
            blur["p"],
            odd,
            median["p"],
            odd,
        )
        assert (dropout["min_holes"], dropout["max_holes"], dropout["fill_value"]) == (1, 1, 0)
        assert (
            pixels["dropout_size"]
            == [dropout["min_height"], dropout["max_height"]]
            == [dropout["min_width"], dropout["max_width"]]
        )
        assert pixels["dropout_prob"] == dropout["p"]
    assert (settings["pixel_augment"]["dropout_prob"], settings["stage2_pixel_augment"]["dropout_prob"]) == (1.0, 0.5)


def test_rtmpose_schedule_equals_mmengines_warm_up_and_cosine():
    """LinearLR from 1e-5 over 1000 iterations, flat, then CosineAnnealingLR to 2e-4 over the second half, as mmengine
    steps them from the config (by-epoch cosine converted to iterations), here with 5 iterations per epoch."""
    reference = GOLDENS["rtmpose-learning-rates"]
    recipe = keypoint_recipe("rtmpose-m")
    assert _stepped_rates(recipe, torch.optim.AdamW, reference) == pytest.approx(reference["rates"], rel=1e-9)


def test_rtmpose_weight_decay_groups_equal_mmengines():
    """No decay on BatchNorm parameters and biases: the same parameters as mmengine's optimiser constructor picks
    on MMPose's own RTMPose-m (its names are ours: pose.models.rtmpose follows MMPose's layout)."""
    from pose.keypoint_task import rtmpose_param_groups

    recipe = keypoint_recipe("rtmpose-m")
    network = recipe.build_network()
    groups = rtmpose_param_groups(network, recipe.weight_decay, recipe.rtmpose)
    names = {id(p): n for n, p in network.named_parameters()}
    free = sorted(names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"])
    assert free == GOLDENS["rtmpose-m/rtmpose-m/256x192/simcc"]["decay_free_parameters"]
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    optimizer = recipe.optimizer(network)
    assert isinstance(optimizer, torch.optim.AdamW) and [g["weight_decay"] for g in optimizer.param_groups] == [
        g["weight_decay"] for g in groups
    ]


def test_rtmpose_m_refuses_what_its_config_does_not_have():
    for args, words in (
        (["--input-size", "384x288"], "256x192"),
        (["--codec", "msra"], "simcc codec"),
        (["--backbone", "resnet50"], "RTMPose-m"),
    ):
        result = CliRunner().invoke(app, ["train-keypoints", "--recipe", "rtmpose-m", *args, "--show-recipe"])
        assert result.exit_code == 2 and words in result.output, result.output
    # MMPose's auto_scale_lr rule from base_batch_size 1024, as for the td-hm recipes
    assert show("--recipe", "rtmpose-m", "--batch-size", "512")["lr"] == pytest.approx(4e-3 * 512 / 1024)


def test_every_mmpose_config_is_a_recipe_and_no_other():
    published = {tuple(key.split("/")[1:]) for key in GOLDENS if key.startswith("mmpose-td-hm/")}
    assert len(published) == 24
    for arch in ("resnet50", "resnet101", "resnet152", "hrnet-w32", "hrnet-w48"):
        for size in ("256x192", "384x288"):
            for codec in ("msra", "dark", "udp"):
                if (arch, size, codec) in published:
                    keypoint_recipe("mmpose-td-hm", backbone=arch, input_size=size, codec=codec)
                else:
                    with pytest.raises(RecipeError, match="no td-hm"):
                        keypoint_recipe("mmpose-td-hm", backbone=arch, input_size=size, codec=codec)


def test_global_batch_and_the_learning_rate_rule():
    sb = show("--recipe", "simple-baselines", "--workers", "4")
    assert (sb["batch_size"], sb["worker_batch"], sb["workers"]) == (128, 32, 4)
    assert show("--recipe", "simple-baselines", "--workers", "1")["worker_batch"] == 128
    halved = show("--recipe", "simple-baselines", "--batch-size", "64")
    assert halved["lr"] == pytest.approx(5e-4)  # linear in the batch, from the batch the release trained with
    # MMPose's auto_scale_lr: from base_batch_size (512), not from the config's own batch (256 for res152)
    res152 = show("--recipe", "mmpose-td-hm", "--backbone", "resnet152", "--batch-size", "128")
    assert res152["lr"] == pytest.approx(5e-4 * 128 / 512)
    assert show("--recipe", "mmpose-td-hm", "--backbone", "resnet152")["lr"] == pytest.approx(5e-4)  # as published
    assert show("--recipe", "simple-baselines", "--lr", "3e-4", "--batch-size", "64")["lr"] == pytest.approx(3e-4)


def test_recipe_mistakes_are_one_line():
    runner = CliRunner()
    for args, words in (
        (["--recipe", "simple-baselines", "--backbone", "resnet18"], "resnet50, resnet101 or resnet152"),
        (["--recipe", "simple-baselines", "--codec", "dark"], "mmpose-td-hm"),
        (
            ["--recipe", "mmpose-td-hm", "--backbone", "resnet50", "--codec", "udp"],
            "no td-hm resnet50 config with the udp codec",
        ),
        (["--recipe", "hrnet-w32", "--input-size", "512x384"], "256x192 and 384x288"),
        (["--recipe", "simple-baselines", "--workers", "3"], "does not divide among 3 workers"),
    ):
        result = runner.invoke(app, ["train-keypoints", *args, "--show-recipe"])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output
    result = runner.invoke(app, ["train-keypoints", "--recipe", "cpu"])
    assert result.exit_code == 2 and "--data" in result.output


def test_cpu_recipe_is_unchanged_and_warns_with_a_resnet50(tmp_path):
    shown = show()
    assert (shown["name"], shown["framework"], shown["backbone"], shown["input_size"], shown["batch_size"]) == (
        "cpu",
        "pose-jobs",
        "resnet18",
        [96, 128],
        32,
    )
    result = CliRunner().invoke(
        app,
        ["train-keypoints", "--backbone", "resnet50", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")],
    )
    assert "is the CPU recipe" in result.output and "--recipe simple-baselines" in result.output


def _train_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for path in (ROOT / "infra").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            entrypoint = (document or {}).get("spec", {}).get("entrypoint", "")
            if "train-keypoints" in entrypoint:
                commands.append((str(path.relative_to(ROOT)), shlex.split(entrypoint)))
        for line in path.read_text().splitlines():  # commands in comments, continued with a backslash
            if "pose-jobs train-keypoints" in line and line.lstrip().startswith("#"):
                text = line.lstrip("# ").rstrip("\\")
                following = path.read_text().splitlines()
                index = following.index(line)
                while following[index].rstrip().endswith("\\"):
                    index += 1
                    text += " " + following[index].lstrip("# ").rstrip("\\")
                commands.append((str(path.relative_to(ROOT)), shlex.split(text)))
    cluster_doc = (ROOT / "docs" / "cluster.md").read_text().replace("\\\n", " ")
    for line in cluster_doc.splitlines():
        if line.startswith("pose-jobs train-keypoints") and "s3://" in line:  # the cluster examples
            commands.append(("docs/cluster.md", shlex.split(line.split("#")[0])))
    return commands


def test_cluster_paths_train_a_reference_recipe():
    commands = _train_commands()
    assert {where for where, _ in commands} >= {
        "infra/kuberay/rayjob-train-keypoints.yaml",
        "infra/aws/cluster.yaml",
        "docs/cluster.md",
    }
    for where, argv in commands:
        args = argv[argv.index("train-keypoints") + 1 :]
        assert "--recipe" in args, f"{where}: {' '.join(argv)} trains the CPU recipe without saying so"
        if args[args.index("--recipe") + 1] == "cpu" and where == "docs/cluster.md":
            continue  # a CPU cluster, said in so many words (the two-node example the tests run)
        assert "--backbone-weights" in args, f"{where}: {' '.join(argv)} trains without ImageNet weights"
        keep = [
            a
            for a in args
            if not a.startswith("s3://")
            and a not in ("--data", "--out", "--backbone-weights", "--address", "--no-wait")
        ]
        keep = [a for a in keep if not a.startswith("http")]
        assert show(*keep)["framework"] != "pose-jobs"


# --------------------------------------------------------------------------------------------
# Evaluation over the whole split, OKS-NMS areas, the reference recipes' boxes and weights


def _person(image_id: int, annotation_id: int, x: float, y: float) -> dict:
    rng = np.random.default_rng(annotation_id)
    points = np.stack([x + rng.uniform(0, 60, 17), y + rng.uniform(0, 120, 17), np.full(17, 2.0)], 1)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [x, y, 60.0, 120.0],
        "keypoints": points.reshape(-1).tolist(),
        "num_keypoints": 17,
        "area": 5000.0,
        "iscrowd": 0,
        "segmentation": [],
    }


def _ground_truth(images: int) -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(1, images + 1)],
        "annotations": [_person(i, 100 + i, 20.0 + i, 30.0) for i in range(1, images + 1)],
        "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}],
    }


def _update(evaluator: KeypointEvaluator, annotations: list[dict]) -> None:
    keypoints = np.array([np.asarray(a["keypoints"]).reshape(17, 3)[:, :2] for a in annotations])
    heatmaps = np.zeros((len(annotations), 17, 32, 24), np.float32)
    evaluator.update(
        heatmaps,
        heatmaps,
        np.ones((len(annotations), 17)),
        keypoints,
        np.ones((len(annotations), 17)),
        {
            "image_id": np.array([a["image_id"] for a in annotations]),
            "bbox": np.array([a["bbox"] for a in annotations]),
        },
    )


def test_images_without_predictions_count_as_misses():
    truth = _ground_truth(4)
    evaluator = KeypointEvaluator(HeatmapCodec(input_size=(96, 128), heatmap_size=(24, 32)), truth)
    _update(evaluator, truth["annotations"][:2])  # two of the four images got a person
    whole = evaluator.result()
    seen = KeypointEvaluator(evaluator.codec, truth, seen_images_only=True)
    _update(seen, truth["annotations"][:2])
    assert seen.result()["ap"] == pytest.approx(1.0) and seen.result()["ar"] == pytest.approx(1.0)
    # COCOeval over every image: the two people never predicted are misses (recall 1/2)
    assert whole["ar"] == pytest.approx(0.5)
    assert whole["ap"] == pytest.approx(coco_keypoint_ap(truth, evaluator.results_json())["ap"]) and whole["ap"] < 0.6


def test_oks_nms_uses_the_padded_aspect_fixed_box_area():
    truth = _ground_truth(1)
    [person] = truth["annotations"]
    evaluator = KeypointEvaluator(HeatmapCodec(input_size=(96, 128), heatmap_size=(24, 32)), truth)
    _update(evaluator, [person])
    _, size = box_to_center_size(np.array(person["bbox"]), 96 / 128, 1.25)
    assert evaluator.instances[0]["area"] == pytest.approx(size[0] * size[1])
    assert evaluator.instances[0]["area"] != pytest.approx(60.0 * 120.0)


def test_person_rows_map_back_to_the_image():
    from pose.crops import cut_person_crop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), np.uint8)
    box = np.array([30.5, 20.25, 40.0, 70.0])
    keypoints = np.concatenate([rng.uniform([30, 20], [70, 90], (17, 2)), rng.integers(0, 3, (17, 1))], 1)
    crop = cut_person_crop(image, box, keypoints)
    back_box, back_keypoints = person_in_image(crop.bbox, crop.keypoints, crop.image_from_crop.reshape(-1))
    assert np.allclose(back_box, box, atol=1e-9)
    labelled = keypoints[:, 2] > 0
    assert np.allclose(back_keypoints[labelled], keypoints[labelled], atol=1e-9)
    assert (back_keypoints[~labelled] == 0).all()


def test_reference_networks_load_imagenet_weights_and_published_files():

    recipe = keypoint_recipe("mmpose-td-hm", backbone="hrnet-w32")
    network = recipe.build_network()
    # an ImageNet HRNet classifier file: the backbone's names plus the classifier's own heads
    classifier = {
        key: torch.randn(value.shape) if value.is_floating_point() else value
        for key, value in network.backbone.state_dict().items()
    }
    classifier["classifier.weight"], classifier["incre_modules.0.0.conv1.weight"] = (
        torch.zeros(1000, 2048),
        torch.zeros(32, 32, 1, 1),
    )
    buffer = io.BytesIO()
    torch.save(classifier, buffer)
    task = KeypointTask(recipe, backbone_weights=buffer.getvalue())
    model = task.build_model()
    assert torch.equal(model.backbone.conv1.weight, classifier["conv1.weight"])
    # the head keeps the references' initialisation: N(0, 0.001), zero bias
    assert (
        float(model.head.final_layer.weight.detach().std()) == pytest.approx(0.001, rel=0.2)
        and float(model.head.final_layer.bias.abs().max()) == 0
    )
    wrong = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="HRNet ImageNet weights"):
        KeypointTask(recipe, backbone_weights=wrong.getvalue()).build_model()


def test_a_trained_reference_run_is_run_as_its_published_family():
    recipe = keypoint_recipe("mmpose-td-hm", backbone="resnet50", codec="dark", input_size="256x192")
    task = KeypointTask(recipe)
    model = task.pose_model(recipe.build_network())
    assert model.crop.centring == "mmpose" and model.decoder.unbiased and model.decoder.shift_flipped
    udp = KeypointTask(keypoint_recipe("mmpose-td-hm", backbone="hrnet-w32", codec="udp")).pose_model(None)
    assert udp.crop.centring == "udp" and not udp.decoder.shift_flipped
    sb = KeypointTask(keypoint_recipe("simple-baselines")).pose_model(None)
    assert sb.crop.centring == "release" and sb.bgr
    assert KeypointRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def _reference_rows(count: int, seed: int = 0) -> tuple[dict, dict]:
    """`person_crops` rows with their image's JPEG bytes (as `jobs.detector_data.add_image_bytes` adds them), and
    the COCO ground truth of their images."""
    from pose.crops import cut_person_crop
    from pose.images import encode_jpeg

    rng = np.random.default_rng(seed)
    rows = {
        k: [] for k in ("annotation_id", "image_id", "bbox", "keypoints", "image_from_crop", "crop", "area", "image")
    }
    truth = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}],
    }
    for i in range(count):
        image = rng.integers(0, 255, (160, 200, 3), np.uint8)
        box = np.array([40.0 + i, 20.0, 60.0, 120.0])
        keypoints = np.concatenate([rng.uniform([45, 25], [95, 135], (17, 2)), np.full((17, 1), 2.0)], 1)
        crop = cut_person_crop(image, box, keypoints)
        for key, value in (
            ("annotation_id", 10 + i),
            ("image_id", 1 + i),
            ("bbox", crop.bbox),
            ("keypoints", crop.keypoints.reshape(-1)),
            ("image_from_crop", crop.image_from_crop.reshape(-1)),
            ("crop", encode_jpeg(crop.pixels)),
            ("area", 5000.0),
            ("image", encode_jpeg(image)),
        ):
            rows[key].append(value)
        truth["images"].append({"id": 1 + i, "file_name": f"{i}.jpg", "width": 200, "height": 160})
        truth["annotations"].append(
            {
                "id": 10 + i,
                "image_id": 1 + i,
                "category_id": 1,
                "bbox": box.tolist(),
                "keypoints": keypoints.reshape(-1).tolist(),
                "num_keypoints": 17,
                "area": 5000.0,
                "iscrowd": 0,
                "segmentation": [],
            }
        )
    return rows, truth


@pytest.mark.parametrize(
    "name, options", [("simple-baselines", {}), ("mmpose-td-hm", {"codec": "udp", "backbone": "hrnet-w32"})]
)
def test_a_reference_recipe_trains_and_validates_through_the_engine(name, options):
    """The whole reference path without Ray: rows with their image -> the reference's augmentation, warp and
    targets -> optimiser steps -> validation on the original images through the published family's chain."""
    from pose.engine import evaluate, train_one_epoch
    from pose.keypoint_task import prepare_reference_batch

    rows, truth = _reference_rows(2)
    recipe = replace(keypoint_recipe(name, **options), batch_size=2)
    task = KeypointTask(recipe, ground_truth=truth, seed=3)
    prepared = task.prepare_batch(rows, epoch=0)
    assert prepared["image"].shape == (2, 256, 192, 3) and prepared["image"].dtype == np.uint8
    assert prepared["target"].shape == (2, 17, 64, 48) and prepared["target_weight"].shape == (2, 17)
    assert "color" not in prepared  # no colour jitter in the references
    again = prepare_reference_batch(recipe, 3, {k: v[::-1] for k, v in rows.items()}, epoch=0)
    assert np.array_equal(
        again["image"][::-1], prepared["image"]
    )  # a row's draw depends on (seed, epoch, annotation), not its place
    assert not np.array_equal(task.prepare_batch(rows, epoch=1)["image"], prepared["image"])
    # every weighted joint has a Gaussian on the map (peak 1 on the map, lower for a joint just off it); others none
    weights = prepared["target_weight"] > 0
    peaks = prepared["target"].astype(np.float32).reshape(2, 17, -1).max(-1)
    assert (
        weights.any() and (peaks[weights] > 0).all() and (peaks[~weights] == 0).all() and peaks.max() > 0.99
    )  # UDP: sub-pixel centre

    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, steps_per_epoch=1)
    result = train_one_epoch(model, task, [prepared], optimizer, scheduler, device="cpu")
    assert result.steps == 1 and np.isfinite(result.loss)
    figures = evaluate(model, task, [rows], device="cpu")
    assert set(figures) == {"ap", "ap50", "ap75", "ar"} and 0.0 <= figures["ap"] <= 1.0


def test_rows_get_their_original_image_bytes(tmp_path):
    import pyarrow as pa

    from jobs.detector_data import add_image_bytes

    (tmp_path / "a.jpg").write_bytes(b"first image")
    (tmp_path / "b.jpg").write_bytes(b"second image")
    batch = pa.table({"annotation_id": [1, 2, 3], "image_id": [7, 8, 7]})
    from jobs.storage import StorageOptions

    out = add_image_bytes(batch, {7: str(tmp_path / "a.jpg"), 8: str(tmp_path / "b.jpg")}, StorageOptions())
    assert out["image"].to_pylist() == [b"first image", b"second image", b"first image"]
    assert out["annotation_id"].to_pylist() == [1, 2, 3]


def test_train_keypoints_with_a_reference_recipe_on_ray(ray_cluster, tmp_path):
    """`train-keypoints --recipe simple-baselines` on Ray: the rows reach the workers with their images' bytes, one
    epoch trains and validates on the original images, and `eval-keypoints` runs the run folder as a published
    Simple Baselines file."""
    from jobs.ingest import ingest
    from pose.synth.people import write_coco

    write_coco(tmp_path / "src", split="train", images=3, seed=31)
    write_coco(tmp_path / "src", split="val", images=2, seed=32)
    ingest("coco", str(tmp_path / "src"), str(tmp_path / "coco"), progress=False)
    common = ["--data", str(tmp_path / "coco")]
    result = CliRunner().invoke(
        app,
        [
            "train-keypoints",
            *common,
            "--out",
            str(tmp_path / "run"),
            "--recipe",
            "simple-baselines",
            "--epochs",
            "1",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["recipe"]["framework"] == "simple-baselines" and info["model"]["arch"] == "resnet50"
    assert info["final"]["steps"] >= 1 and np.isfinite(info["final"]["loss"]) and 0.0 <= info["final"]["val_ap"] <= 1.0
    result = CliRunner().invoke(app, ["eval-keypoints", *common, "--model", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert 0.0 <= figures["ap"] <= 1.0 and "pck" not in figures


def test_train_keypoints_rtmpose_m_on_ray_keeps_and_saves_its_ema(ray_cluster, tmp_path):
    """`train-keypoints --recipe rtmpose-m` on Ray: the checkpoint holds the EMA (updated at every optimiser step,
    restored on resume) and model.pt is the averaged weights, as MMPose's EMAHook saves them."""
    from jobs.ingest import ingest
    from pose.synth.people import write_coco

    write_coco(tmp_path / "src", split="train", images=3, seed=33)
    write_coco(tmp_path / "src", split="val", images=2, seed=34)
    ingest("coco", str(tmp_path / "src"), str(tmp_path / "coco"), progress=False)
    data, run = str(tmp_path / "coco"), str(tmp_path / "run")
    result = CliRunner().invoke(app, ["train-keypoints", "--data", data, "--out", run,
                                      "--recipe", "rtmpose-m", "--epochs", "1", "--batch-size", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["recipe"]["name"] == "rtmpose-m" and 0.0 <= info["final"]["val_ap"] <= 1.0
    checkpoint = torch.load(sorted((tmp_path / "run").glob("checkpoint_*/checkpoint.pt"))[-1], weights_only=False)
    assert checkpoint["ema"]["steps"] == info["final"]["steps"] >= 1
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    averaged = checkpoint["ema"]["module"]
    assert saved.keys() == averaged.keys() and all(torch.equal(saved[k], averaged[k]) for k in saved)


def test_rtmpose_m_trains_through_the_engine_with_its_ema():
    """RTMPose-m from the recipe through pose.engine without Ray: the backbone from an MMPose file's `backbone.*`
    keys, SimCC labels of the stage's augmentation, the KL loss, AdamW's groups, and the EMA updated after every
    optimiser step (mmengine's ExpMomentumEMA) and validated in place of the trained weights."""
    from pose.engine import evaluate, train_one_epoch
    from pose.keypoint_task import rtmpose_augment

    rows, truth = _reference_rows(2)
    recipe = replace(keypoint_recipe("rtmpose-m"), batch_size=2)
    assert rtmpose_augment(recipe, 389) == (recipe.augment, recipe.rtmpose.pixel_augment)
    assert rtmpose_augment(recipe, 390) == (recipe.rtmpose.stage2_augment, recipe.rtmpose.stage2_pixel_augment)
    # the pretrained CSPNeXt file: a whole MMPose checkpoint (its own heatmap head is ignored)
    backbone = {
        f"backbone.{k}": torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in recipe.build_network().backbone.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save({"meta": {}, "state_dict": {**backbone, "head.final_layer.weight": torch.zeros(17, 768, 1, 1)}}, buffer)
    task = KeypointTask(recipe, ground_truth=truth, seed=3, backbone_weights=buffer.getvalue())

    prepared = task.prepare_batch(rows, epoch=0)
    assert prepared["image"].shape == (2, 256, 192, 3) and "target" not in prepared
    assert (
        prepared["target_x"].shape == (2, 17, 384)
        and prepared["target_y"].shape == (2, 17, 512)
        and prepared["target_x"].dtype == np.float32
    )
    weighted = prepared["target_weight"] > 0
    assert (
        weighted.any()
        and (prepared["target_x"].max(-1)[weighted] > 0).all()
        and (prepared["target_x"].max(-1)[~weighted] == 0).all()
    )
    late = task.prepare_batch(rows, epoch=recipe.epochs - 1)  # stage 2: another augmentation, the same shapes
    assert late["target_x"].shape == prepared["target_x"].shape and not np.array_equal(late["image"], prepared["image"])

    model = task.build_model()
    assert torch.equal(model.backbone.stem[0].conv.weight, backbone["backbone.stem.0.conv.weight"])
    assert float(model.head.cls_x.weight.detach().std()) == pytest.approx(
        0.01, rel=0.1
    )  # RTMCCHead's init, not PyTorch's
    optimizer, scheduler = task.build_optimizer(model, steps_per_epoch=2)
    assert task.averaged(model) is task.ema.module and task.ema.steps == 0
    # after the first step the average is the model's copy; the second moves it by MMPose's momentum at update 1
    result = train_one_epoch(model, task, [prepared], optimizer, scheduler, device="cpu")
    first = model.head.cls_x.weight.detach().clone()
    assert (
        result.steps == 1
        and np.isfinite(result.loss)
        and task.ema.steps == 1
        and torch.equal(task.ema.module.head.cls_x.weight, first)
    )
    train_one_epoch(model, task, [late], optimizer, scheduler, device="cpu")
    momentum = (1 - 0.0002) * np.exp(-2 / 2000) + 0.0002
    expected = first * (1 - momentum) + model.head.cls_x.weight.detach() * momentum
    assert task.ema.steps == 2 and not torch.equal(first, model.head.cls_x.weight)
    assert torch.allclose(task.ema.module.head.cls_x.weight, expected, rtol=1e-5, atol=1e-9)
    figures = evaluate(model, task, [rows], device="cpu")
    assert set(figures) == {"ap", "ap50", "ap75", "ar"} and 0.0 <= figures["ap"] <= 1.0
