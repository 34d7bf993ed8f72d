"""A small real digit set in SVHN's format, and pose-jobs' SVHN recipe against a plain hand-written
CNN on it at equal wall time.

The digits are scikit-learn's bundled `load_digits` set (1,797 handwritten digits of 8x8 pixels,
values 0-16, from the UCI "Optical Recognition of Handwritten Digits" data): real digits that no one
here drew. Each is upscaled to 32x32 (bilinear), painted with ink and background in random colours
(at least a little contrast between them, as on a street sign) plus a little pixel noise, and written
as SVHN format 2 (`train_32x32.mat`, `test_32x32.mat`: X (32, 32, 3, N) uint8, y (N, 1), 10 for the
digit 0) with `pose.formats.svhn.write_cropped_mat`, so that `pose-jobs ingest svhn` reads it as it
reads SVHN. The first 1,300 digits (in a fixed shuffle) are `train`, the other 497 `test`.

scikit-learn is not a dependency of pose-jobs: the script reads the data file inside its wheel,
`sklearn/datasets/data/digits.csv.gz` (64 pixel values and the label per line), found through an
importable `sklearn` or given with `--digits-csv` (e.g. unzip it from a downloaded wheel:
`pip download scikit-learn --no-deps -d /tmp/sk && unzip /tmp/sk/*.whl 'sklearn/datasets/data/*' -d /tmp/sk`).

`compare` trains, in this process and without Ray, on the same `train` split:
  - "recipe": `pose.digit_task.DigitTask` with the default `DigitRecipe` (what `pose-jobs train-svhn`
    runs, every step through `pose.engine.train_one_epoch`), its length resolved by
    `DigitRecipe.schedule` for this training set;
  - "hand": three conv layers and Adam, written plainly below, for as many epochs as fit in the time
    the recipe took (whole epochs; the epoch that crosses the time is the last): wall time, or with
    `--budget cpu` the process's CPU time, the fairer measure when other jobs load the machine;
and prints both test accuracies, with the wall and CPU seconds of each.

    python benchmarks/svhn_small_real.py make data/svhn-real --digits-csv /tmp/sk/sklearn/datasets/data/digits.csv.gz
    python benchmarks/svhn_small_real.py compare data/svhn-real --threads 2
    pose-jobs ingest svhn data/svhn-real out/svhn-real   # the same files through the jobs
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pose.formats import svhn

TRAIN_DIGITS = 1300


def find_digits_csv(given: str | None) -> Path:
    """`given`, or the digits.csv.gz of an importable scikit-learn; one line naming the fix when neither exists."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise SystemExit(f"{path}: no such file; point --digits-csv at sklearn/datasets/data/digits.csv.gz")
        return path
    try:
        import sklearn
    except ImportError:
        raise SystemExit(
            "scikit-learn is not importable here: give --digits-csv PATH/sklearn/datasets/data/digits.csv.gz"
        ) from None
    return Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"


def load_digits_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) float in 0..1, digits (N,) int 0..9) from scikit-learn's digits.csv.gz."""
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",")
    return table[:, :64].reshape(-1, 8, 8) / 16.0, table[:, 64].astype(np.int64)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ink and background RGB in 0..1, any hues, whose luminances differ by at least 0.25 (either way round)."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        ink, background = rng.random(3), rng.random(3)
        if abs(ink @ weights - background @ weights) >= 0.25:
            return ink, background


def paint(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8) ink coverage in 0..1 -> (N, 32, 32, 3) uint8: upscaled, coloured, noisy."""
    out = np.empty((len(images), 32, 32, 3), np.uint8)
    for i, image in enumerate(images):
        coverage = np.asarray(
            Image.fromarray(image.astype(np.float32), mode="F").resize((32, 32), Image.BILINEAR)
        ).clip(0, 1)
        ink, background = _colour_pair(rng)
        rgb = background + coverage[..., None] * (ink - background) + rng.normal(0, 0.03, (32, 32, 3))
        out[i] = np.round(rgb.clip(0, 1) * 255)
    return out


def make(dest: Path, digits_csv: Path, seed: int) -> dict:
    """Writes dest/train_32x32.mat and dest/test_32x32.mat; returns the counts."""
    images, digits = load_digits_csv(digits_csv)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    pixels, labels = paint(images[order], rng), np.where(digits[order] == 0, 10, digits[order])
    dest.mkdir(parents=True, exist_ok=True)
    svhn.write_cropped_mat(dest / "train_32x32.mat", pixels[:TRAIN_DIGITS], labels[:TRAIN_DIGITS])
    svhn.write_cropped_mat(dest / "test_32x32.mat", pixels[TRAIN_DIGITS:], labels[TRAIN_DIGITS:])
    return {"train": TRAIN_DIGITS, "test": len(labels) - TRAIN_DIGITS, "source": str(digits_csv)}


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 32, 32, 3) uint8, digits (N,) 0..9) of folder/{split}_32x32.mat."""
    with open(folder / f"{split}_32x32.mat", "rb") as file:
        pixels = np.concatenate([chunk for _, chunk in svhn.iter_cropped_digits(file)])
    with open(folder / f"{split}_32x32.mat", "rb") as file:
        labels = np.array([svhn.digit_from_label(v) for v in svhn.read_cropped_labels(file)])
    return pixels, labels


# ------------------------------------------------------------------------------------------------
# The plain baseline, as one writes it by hand


class HandCNN(nn.Module):
    """Three conv layers (32, 64, 128 channels, 3x3, ReLU, 2x2 max-pool) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(128 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def hand_tensors(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def hand_accuracy(model: nn.Module, pixels: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(hand_tensors(pixels)).argmax(1).numpy()
    return float((predicted == labels).mean())


def train_hand(train: tuple, test: tuple, seconds: float, seed: int, clock=time.perf_counter) -> dict:
    """Adam 1e-3, batch 64, epochs until `seconds` of `clock` have passed."""
    torch.manual_seed(seed)
    model, images, labels = HandCNN(), hand_tensors(train[0]), torch.from_numpy(train[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started, cpu_started, budget_started, epochs = time.perf_counter(), time.process_time(), clock(), 0
    while clock() - budget_started < seconds:
        model.train()
        for batch in torch.randperm(len(labels)).split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs += 1
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "epochs": epochs,
        "test_accuracy": hand_accuracy(model, *test),
    }


# ------------------------------------------------------------------------------------------------
# pose-jobs' recipe, through the training engine


def train_recipe(train: tuple, test: tuple, seed: int, recipe=None) -> dict:
    """The default `DigitRecipe` (or `recipe`) on the whole `train` split, as one Ray Train worker runs it."""
    from pose.digit_task import DigitRecipe, DigitTask
    from pose.engine import batch_plan, evaluate, train_one_epoch
    from pose.precision import training_precision

    recipe = recipe or DigitRecipe()
    task = DigitTask(recipe)
    plan = batch_plan(recipe.batch_size, 1, len(train[1]))
    schedule = recipe.schedule(plan.steps_per_epoch)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    precision = training_precision(device, "auto", task)
    model = precision.prepare(task.build_model())
    optimizer, scheduler = task.build_optimizer(model, plan.steps_per_epoch)
    rng = np.random.default_rng(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(schedule.epochs):
        order = rng.permutation(len(train[1]))[: plan.steps_per_epoch * plan.global_batch]
        batches = ({"pixels": train[0][i], "label": train[1][i]} for i in order.reshape(plan.steps_per_epoch, -1))
        generator = torch.Generator().manual_seed(seed * 1009 + epoch)
        train_one_epoch(
            model, task, batches, optimizer, scheduler, device=device, precision=precision, generator=generator
        )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [{"pixels": test[0][i : i + 512], "label": test[1][i : i + 512]} for i in range(0, len(test[1]), 512)]
    figures = evaluate(model, task, rows, device=device, precision=precision)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "epochs": schedule.epochs,
        "steps": schedule.epochs * plan.steps_per_epoch,
        "precision": precision.describe(),
        "test_accuracy": figures["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="write the SVHN-format files")
    make_parser.add_argument("dest", type=Path)
    make_parser.add_argument(
        "--digits-csv", help="sklearn/datasets/data/digits.csv.gz (default: from an importable sklearn)"
    )
    make_parser.add_argument("--seed", type=int, default=0)
    compare_parser = commands.add_parser("compare", help="the recipe vs the hand CNN at equal wall time")
    compare_parser.add_argument("folder", type=Path, help="a folder with train_32x32.mat and test_32x32.mat")
    compare_parser.add_argument("--threads", type=int, default=2)
    compare_parser.add_argument("--seed", type=int, default=0)
    compare_parser.add_argument(
        "--budget",
        choices=("wall", "cpu"),
        default="wall",
        help="the hand CNN's time budget: the recipe's wall or CPU seconds",
    )
    args = parser.parse_args()

    if args.command == "make":
        print(json.dumps(make(args.dest, find_digits_csv(args.digits_csv), args.seed)))
        return
    torch.set_num_threads(args.threads)
    train, test = read_split(args.folder, "train"), read_split(args.folder, "test")
    recipe = train_recipe(train, test, args.seed)
    print(json.dumps({"recipe": recipe}), flush=True)
    if args.budget == "cpu":
        hand = train_hand(train, test, recipe["cpu_seconds"], args.seed, clock=time.process_time)
    else:
        hand = train_hand(train, test, recipe["seconds"], args.seed)
    print(json.dumps({"hand": hand}), flush=True)
    print(
        f"{len(train[1])} training digits, {len(test[1])} test digits, {args.threads} threads: "
        f"recipe {recipe['test_accuracy']:.1%} ({recipe['epochs']} epochs, {recipe['steps']} steps, "
        f"{recipe['seconds']:.0f} s wall, {recipe['cpu_seconds']:.0f} s CPU, {recipe['precision']}) "
        f"vs hand CNN {hand['test_accuracy']:.1%} at equal {args.budget} time "
        f"({hand['epochs']} epochs, {hand['seconds']:.0f} s wall, {hand['cpu_seconds']:.0f} s CPU)"
    )


if __name__ == "__main__":
    main()
