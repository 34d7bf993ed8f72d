import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from jobs.ingest import coco_shard_tables, plan_coco
from jobs.storage import StorageOptions
from pose import schema
from pose.augment import AugmentConfig, jitter_colors, normalize
from pose.crops import CropSettings
from pose.engine import evaluate, train_one_epoch
from pose.heatmaps import flip_heatmaps, to_image_coordinates
from pose.keypoint_task import (
    KeypointBatchTransform,
    KeypointEvaluator,
    KeypointRecipe,
    KeypointTask,
    evaluation_figure,
    ground_truth_from_tables,
    keypoint_loss,
    predict,
)
from pose.synth.people import write_coco

# Small and fast: a 64x96 input gives 16x24 heatmaps; with the full augmentation (the GPU recipe's).
RECIPE = KeypointRecipe(
    input_size=(64, 96), sigma=1.0, batch_size=4, lr=1e-3, epochs=1, warmup_steps=0, augment=AugmentConfig()
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, pa.Table]:
    """images, persons and person_crops of 6 synthetic val images, made by ingest's shard function."""
    source = tmp_path_factory.mktemp("coco")
    write_coco(source, split="val", images=6, seed=3)
    options = StorageOptions()
    rows = {"images": [], "persons": [], "person_crops": []}
    for shard in plan_coco(str(source), options, splits=("val",)).shards:
        shard_rows = coco_shard_tables(shard, options, CropSettings())
        for name in rows:
            rows[name] += shard_rows[name]
    return {name: pa.Table.from_pylist(value, schema=schema.TABLES[name]) for name, value in rows.items()}


@pytest.fixture(scope="module")
def crops(tables) -> dict:
    batch = tables["person_crops"].to_pydict()
    assert len(batch["crop"]) >= 8
    return batch


def rows(batch: dict, index) -> dict:
    return {name: [values[i] for i in index] for name, values in batch.items()}


# --- recipe ----------------------------------------------------------------------------------


def test_recipe_ties_input_heatmaps_and_augmentation_together():
    recipe = KeypointRecipe(input_size=(96, 128), augment=AugmentConfig(rotation=30))
    assert recipe.augment.input_size == (96, 128) and recipe.augment.rotation == 30
    assert recipe.model_config().heatmap_size == (24, 32)
    assert recipe.codec().heatmap_size == (24, 32) and recipe.codec().input_size == (96, 128)
    assert KeypointRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_cpu_recipe_is_a_cut_resnet18_and_old_runs_load_as_whole_resnets():
    recipe = KeypointRecipe()
    config = recipe.model_config()
    assert (config.backbone, config.backbone_stages, config.deconv_layers, config.output_stride) == (
        "resnet18",
        2,
        1,
        4,
    )
    assert recipe.codec().heatmap_size == (24, 32)
    assert recipe.augment.flip and recipe.augment.scale == 0 and recipe.augment.rotation_prob == 0
    saved_before_cut_backbones = {
        k: v for k, v in recipe.to_dict().items() if k not in ("backbone_stages", "deconv_layers")
    }
    assert KeypointRecipe.from_dict(saved_before_cut_backbones).model_config().backbone_stages == 4


def scheduled_rates(recipe: KeypointRecipe, steps_per_epoch: int) -> list[float]:
    """The learning rate before each optimiser step of the recipe's epochs, as its scheduler sets it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    scheduler = recipe.scheduler(optimizer, steps_per_epoch=steps_per_epoch)
    rates = []
    for _ in range(recipe.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedule_warms_up_then_decays():
    rates = scheduled_rates(KeypointRecipe(epochs=2, lr=1.0, warmup_steps=10), steps_per_epoch=50)
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.01

    steps = KeypointRecipe(epochs=3, lr=1.0, warmup_steps=0, schedule="multistep", lr_steps=(1, 2))
    rates = scheduled_rates(steps, steps_per_epoch=4)
    assert rates == pytest.approx([1.0] * 4 + [0.1] * 4 + [0.01] * 4)


# --- transform -------------------------------------------------------------------------------


def test_transform_shapes_and_types(crops):
    out = KeypointBatchTransform(RECIPE, train=True)(crops)
    n = len(crops["crop"])
    expected = {
        "image": ((n, 96, 64, 3), np.uint8),
        "color": ((n, 3), np.float32),
        "target": ((n, 17, 24, 16), np.float16),
        "target_weight": ((n, 17), np.float32),
        "keypoints": ((n, 17, 2), np.float32),
        "input_from_crop": ((n, 2, 3), np.float64),
        "image_from_input": ((n, 2, 3), np.float64),
        "annotation_id": ((n,), np.int64),
        "image_id": ((n,), np.int64),
        "area": ((n,), np.float64),
        "bbox": ((n, 4), np.float64),
        "box_score": ((n,), np.float64),
    }
    assert {name: (value.shape, value.dtype) for name, value in out.items()} == expected
    assert out["target"].max() == 1.0 and out["target_weight"].sum() > 0
    # An empty batch (Ray Data can hand one over) gives the same columns with no rows.
    empty = KeypointBatchTransform(RECIPE, train=True)(rows(crops, []))
    assert {name: (value.shape[1:], value.dtype) for name, value in empty.items()} == {
        name: (shape[1:], dtype) for name, (shape, dtype) in expected.items()
    }
    assert all(len(value) == 0 for value in empty.values())


def test_eval_transform_maps_back_to_the_image(tables, crops):
    """Without augmentation the decoded targets, mapped through image_from_input, are the
    annotation's keypoints (within half a heatmap pixel: joints on the heatmap's border keep the
    integer argmax), and `bbox` is the annotation's box."""
    out = KeypointBatchTransform(RECIPE, train=False)(crops)
    persons = {row["annotation_id"]: row for row in tables["persons"].to_pylist()}
    keypoints, _ = RECIPE.codec().decode(out["target"].astype(np.float32))
    in_image = to_image_coordinates(keypoints, out["image_from_input"])
    for i, annotation_id in enumerate(out["annotation_id"]):
        person = persons[int(annotation_id)]
        truth = np.asarray(person["keypoints"]).reshape(17, 3)
        scored = out["target_weight"][i] > 0
        heatmap_pixel = out["image_from_input"][i, 0, 0] * RECIPE.codec().stride[0]  # in image pixels
        assert np.abs(in_image[i][scored] - truth[scored, :2]).max() <= 0.5 * heatmap_pixel
        assert out["bbox"][i] == pytest.approx(person["bbox"], abs=0.01)


def test_transform_is_deterministic_per_annotation_and_epoch(crops):
    transform = KeypointBatchTransform(RECIPE, train=True, seed=7)
    whole = transform(crops)
    again = KeypointBatchTransform(RECIPE, train=True, seed=7)(crops)
    for name in whole:
        np.testing.assert_array_equal(whole[name], again[name])

    # A row gives the same sample in another batch, in another order.
    part = transform(rows(crops, [5, 2]))
    np.testing.assert_array_equal(part["image"], whole["image"][[5, 2]])
    np.testing.assert_array_equal(part["target"], whole["target"][[5, 2]])

    # Another epoch (from the constructor or from the batch's column) or seed: other samples.
    other_epoch = KeypointBatchTransform(RECIPE, train=True, seed=7, epoch=1)(crops)
    assert not np.array_equal(other_epoch["image"], whole["image"])
    with_column = transform({**crops, "epoch": np.ones(len(crops["crop"]), np.int64)})
    np.testing.assert_array_equal(with_column["image"], other_epoch["image"])
    other_seed = KeypointBatchTransform(RECIPE, train=True, seed=8)(crops)
    assert not np.array_equal(other_seed["image"], whole["image"])


def test_train_mode_augments_and_eval_mode_does_not(crops):
    evaluation = KeypointBatchTransform(RECIPE, train=False, seed=1)(crops)
    np.testing.assert_array_equal(
        evaluation["image"], KeypointBatchTransform(RECIPE, train=False, seed=2)(crops)["image"]
    )
    training = KeypointBatchTransform(RECIPE, train=True)(crops)
    assert not np.array_equal(training["input_from_crop"], evaluation["input_from_crop"])
    assert not np.array_equal(training["image"], evaluation["image"])
    # The person box is the box, whatever the augmentation.
    np.testing.assert_allclose(training["bbox"], evaluation["bbox"])


def test_transform_accepts_ray_style_numpy_columns(crops):
    """Ray Data's numpy batches hold list columns as 2-D arrays and binary as an object array."""
    numpy_batch = {name: np.asarray(values) for name, values in crops.items() if name != "crop"}
    numpy_batch["crop"] = np.array(crops["crop"], dtype=object)
    a = KeypointBatchTransform(RECIPE, train=True)(numpy_batch)
    b = KeypointBatchTransform(RECIPE, train=True)(crops)
    np.testing.assert_array_equal(a["image"], b["image"])


# --- loss ------------------------------------------------------------------------------------


def test_keypoint_loss_is_half_weighted_mse():
    torch.manual_seed(0)
    target = torch.rand(2, 17, 8, 6)
    weight = torch.ones(2, 17)
    assert keypoint_loss(target.clone(), target, weight).item() == 0.0

    predicted = target.clone()
    predicted[0, 3] += 1.0  # every pixel of one joint off by 1
    assert keypoint_loss(predicted, target, weight).item() == pytest.approx(0.5 / (2 * 17))
    weight[0, 3] = 0.0
    assert keypoint_loss(predicted, target, weight).item() == 0.0
    weight[0, 3] = 0.5
    assert keypoint_loss(predicted, target, weight).item() == pytest.approx(0.5 * 0.25 / (2 * 17))
    assert keypoint_loss(predicted.half(), target.half(), weight).dtype == torch.float32


# --- prediction and evaluation ---------------------------------------------------------------


class PerfectModel(torch.nn.Module):
    """Answers the true heatmaps for the inputs of the batches it was made with, and their mirror
    for mirrored inputs."""

    def __init__(self, *batches: dict):
        super().__init__()
        self.pairs = [(normalize(b["image"]).contiguous(), torch.as_tensor(b["target"]).float()) for b in batches]
        self.unused = torch.nn.Parameter(torch.zeros(1))  # predict asks the parameters for the device

    def forward(self, images):
        for inputs, target in self.pairs:
            if torch.equal(images, inputs):
                return target
            if torch.equal(images, inputs.flip(-1)):
                return flip_heatmaps(target)
        raise AssertionError("an input the model was not made for")


def fully_visible_images(batch: dict) -> list[int]:
    """Images none of whose persons has a labelled joint outside the model input (a top-down model
    cannot place those, so even perfect heatmaps miss them)."""
    keypoints = np.asarray(batch["keypoints"]).reshape(len(batch["crop"]), 17, 3)
    missing = (keypoints[..., 2] > 0) & ~(batch["target_weight"] > 0)
    bad = {int(i) for i, m in zip(batch["image_id"], missing.any(1)) if m}
    return sorted({int(i) for i in batch["image_id"]} - bad)


def test_perfect_heatmaps_score_pck_1_and_ap_1(tables, crops):
    """The engine's evaluation pass with the task's evaluator: rows in, PCK and COCO AP out."""
    evaluation = KeypointBatchTransform(RECIPE, train=False)(crops)
    keep = fully_visible_images({**crops, "target_weight": evaluation["target_weight"]})
    index = [i for i, image_id in enumerate(crops["image_id"]) if image_id in keep]
    assert len(index) >= 4
    half = len(index) // 2
    # The ground truth of the images evaluated: COCO's AP counts every image of it, seen or not.
    everything = ground_truth_from_tables(tables["images"], tables["persons"])
    ground_truth = {
        **everything,
        "images": [i for i in everything["images"] if i["id"] in keep],
        "annotations": [a for a in everything["annotations"] if a["image_id"] in keep],
    }
    task = KeypointTask(RECIPE, ground_truth=ground_truth)
    evaluator = task.evaluator()
    task.evaluator = lambda: evaluator  # to read its instances after the pass

    # Two batches of rows, the second with Ray-style numpy columns.
    first = rows(crops, index[:half])
    second = {
        name: np.asarray(value, dtype=object if name == "crop" else None)
        for name, value in rows(crops, index[half:]).items()
    }
    model = PerfectModel(*(KeypointBatchTransform(RECIPE, train=False)(part) for part in (first, second)))
    metrics = evaluate(model, task, [first, second], device="cpu")
    assert metrics["pck"] == 1.0
    assert metrics["ap"] > 0.95 and metrics["ar"] > 0.95
    assert evaluator.figures.result()["instances"] == len(index)

    results = evaluator.figures.results_json()
    assert len(results) == len(index)
    assert {key for r in results for key in r} == {"image_id", "category_id", "keypoints", "score"}
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 51 and 0 < r["score"] <= 1 for r in results)
    json.dumps(results)

    prepared = KeypointBatchTransform(RECIPE, train=False)(first)
    keypoints, scores, heatmaps = predict(model, prepared["image"], flip_test=False, codec=RECIPE.codec())
    assert (
        keypoints.shape == (half, 17, 2) and scores.shape == (half, 17) and heatmaps.shape == prepared["target"].shape
    )

    # The figures also take torch tensors (as Ray's iter_torch_batches gives them).
    figures = KeypointEvaluator(RECIPE.codec(), None)
    tensors = {name: torch.as_tensor(prepared[name]) for name in ("target", "target_weight", "image_id", "bbox")}
    figures.update(
        tensors["target"], tensors["target"], tensors["target_weight"], np.zeros((half, 17, 2)), scores, tensors
    )
    assert figures.result()["pck"] == 1.0


def test_evaluator_scores_instances_as_simple_baselines(tables):
    codec = RECIPE.codec()
    evaluator = KeypointEvaluator(codec, None)
    heatmaps = np.zeros((2, 17, 24, 16), np.float32)
    scores = np.full((2, 17), 0.1, np.float32)
    scores[0, :4] = 0.8  # joints below 0.2 do not count
    meta = {
        "image_id": np.array([1, 2]),
        "bbox": np.array([[0, 0, 10, 20], [5, 5, 10, 10]]),
        "box_score": np.array([0.5, 1.0]),
    }
    evaluator.update(heatmaps, heatmaps, np.ones((2, 17)), np.zeros((2, 17, 2)), scores, meta)
    results = evaluator.results_json()
    assert [r["score"] for r in results] == pytest.approx([0.4, 0.0])
    assert np.isnan(evaluator.result()["ap"])


def test_ground_truth_loads_in_pycocotools(tables):
    ground_truth = ground_truth_from_tables(tables["images"], tables["persons"], split="val")
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    assert len(coco.getImgIds()) == tables["images"].num_rows
    assert len(coco.getAnnIds()) == tables["persons"].num_rows
    annotation = ground_truth["annotations"][0]
    assert isinstance(annotation["segmentation"], (list, dict)) and annotation["iscrowd"] in (0, 1)
    assert len(annotation["keypoints"]) == 51
    assert ground_truth_from_tables(tables["images"], tables["persons"], split="train")["annotations"] == []


# --- training --------------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss(crops):
    """The task through the engine's epoch: the loss falls on a batch seen again."""
    torch.manual_seed(0)
    task = KeypointTask(RECIPE)
    batch = KeypointBatchTransform(RECIPE, train=False)(rows(crops, range(8)))  # prepared, without augmentation
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, steps_per_epoch=3)
    first = train_one_epoch(model, task, [batch] * 3, optimizer, scheduler, device="cpu")
    second = train_one_epoch(model, task, [batch] * 3, optimizer, scheduler, device="cpu")
    assert first.samples == 24 and first.steps == 3 and first.seconds > 0
    assert second.loss < first.loss


def test_colours_are_jittered_on_the_device(crops):
    """Batches carry colour-jitter factors; device_inputs applies them before normalising."""
    task = KeypointTask(RECIPE, seed=3)
    prepared = task.prepare_batch(rows(crops, range(6)), 1)
    assert prepared["color"].shape == (6, 3) and not np.allclose(prepared["color"], 1.0)
    image = task.device_inputs(prepared, torch.device("cpu"))["image"]
    expected = normalize(jitter_colors(torch.from_numpy(prepared["image"]), torch.from_numpy(prepared["color"])))
    torch.testing.assert_close(image, expected)
    assert not torch.allclose(image, normalize(prepared["image"]))


def test_feed_processes_prepare_the_same_batches_as_inline(crops):
    """GPU workers prepare batches on feed processes: the same arrays as preparing them inline."""
    from pose.feed import BatchFeed

    task = KeypointTask(RECIPE, seed=3)
    batches = [rows(crops, range(i, i + 4)) for i in (0, 4)]
    inline = [task.prepare_batch(batch, 2) for batch in batches]
    with BatchFeed(task.preparer(), 2, processes=True) as feed:
        fed = list(feed(batches, 2))
    for mine, theirs in zip(fed, inline):
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])


def test_non_finite_loss_stops_training(crops):
    task = KeypointTask(RECIPE)
    batch = KeypointBatchTransform(RECIPE, train=False)(rows(crops, range(2)))
    batch["target"] = np.full_like(batch["target"], np.nan)
    model = task.build_model()
    with pytest.raises(FloatingPointError, match="keypoints: loss is nan at step 1"):
        train_one_epoch(model, task, [batch], RECIPE.optimizer(model), None, device="cpu")


# --- picture ---------------------------------------------------------------------------------


def test_evaluation_figure_shows_rows_of_four_panels(crops):
    batch = KeypointBatchTransform(RECIPE, train=False)(rows(crops, range(3)))
    predicted = batch["target"].astype(np.float32) * 0.8
    figure = evaluation_figure(
        batch["image"],
        batch["target"],
        predicted,
        batch["keypoints"],
        batch["keypoints"] + 1,
        visible=batch["target_weight"],
        scores=batch["target_weight"],
        count=2,
        panel_height=128,
    )
    assert isinstance(figure, Image.Image)
    assert figure.height > 2 * 128 and figure.width > 4 * 96


def test_kl_discrete_loss_equals_mmposes():
    """RTMPose's KLDiscretLoss(beta=10, label_softmax=True, use_target_weight=True) and the class defaults (beta 1, raw
    labels) on MMPose's own values (tests/data/goldens/targets_simcc_256x192.npz): MMPose's loss is the batch's sum."""
    from pathlib import Path

    from pose.keypoint_task import kl_discrete_loss

    with np.load(Path(__file__).parent / "data" / "goldens" / "targets_simcc_256x192.npz") as f:
        g = {k: torch.from_numpy(f[k]) for k in f.files if k.startswith("kl_")}
    predicted, target = (g["kl_logits_x"], g["kl_logits_y"]), (g["kl_labels_x"], g["kl_labels_y"])
    per_sample = kl_discrete_loss(predicted, target, g["kl_weights"])
    assert per_sample.shape == (4,) and per_sample.sum().item() == pytest.approx(g["kl_loss"].item(), rel=1e-6)
    plain = kl_discrete_loss(predicted, target, g["kl_weights"], beta=1.0, label_softmax=False)
    assert plain.sum().item() == pytest.approx(g["kl_loss_defaults"].item(), rel=1e-6)
    # a joint of weight 0 adds nothing, whatever its logits
    weights = g["kl_weights"].clone()
    weights[0] = 0
    changed = (g["kl_logits_x"].clone(), g["kl_logits_y"])
    changed[0][0] += 5.0
    assert kl_discrete_loss(changed, target, weights)[0].item() == 0.0
