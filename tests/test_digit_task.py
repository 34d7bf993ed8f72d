"""pose/digit_task.py: the recipe's length and learning-rate rules, and that the recipe learns a small
set (the case a length stated in epochs alone got wrong: 8 epochs of 2,000 digits are ~60 steps)."""

import numpy as np
import pytest
import torch

from pose.digit_task import DigitRecipe, DigitTask
from pose.engine import batch_plan, evaluate, train_one_epoch
from pose.models.digits import DigitModelConfig
from pose.synth import digits as synth_digits


def test_a_small_set_gets_the_minimum_steps_and_a_large_one_its_epochs():
    recipe = DigitRecipe()
    small = recipe.schedule(
        batch_plan(recipe.batch_size, 2, 1_900).steps_per_epoch
    )  # synth svhn's 2,000, less the held-out
    assert small.total_steps >= recipe.min_steps and small.epochs > recipe.epochs
    assert (small.epochs - 1) * small.steps_per_epoch < recipe.min_steps  # no epoch more than needed
    svhn = recipe.schedule(batch_plan(recipe.batch_size, 2, 73_257 - 73_257 // 20 - 1).steps_per_epoch)
    assert svhn.epochs == recipe.epochs and svhn.total_steps > recipe.min_steps
    exact = DigitRecipe(min_steps=0).schedule(14)
    assert (exact.epochs, exact.total_steps) == (recipe.epochs, recipe.epochs * 14)
    with pytest.raises(ValueError):
        recipe.schedule(0)


@pytest.mark.parametrize("rows", [1_235, 1_900, 69_594])
def test_one_or_two_workers_run_the_same_global_steps(rows):
    task = DigitTask()
    one, two = (batch_plan(task.batch_size, workers, rows) for workers in (1, 2))
    assert one.steps_per_epoch == two.steps_per_epoch and two.worker_batch * 2 == one.worker_batch
    assert task.recipe.schedule(one.steps_per_epoch) == task.recipe.schedule(two.steps_per_epoch)
    assert task.epochs_for(one.steps_per_epoch) == task.epochs_for(two.steps_per_epoch)


def test_learning_rate_follows_the_global_batch_and_warms_up_in_steps():
    for batch in (32, 128, 512):
        recipe = DigitRecipe(batch_size=batch, lr=0.1)
        schedule = recipe.schedule(20)
        assert schedule.peak_lr == pytest.approx(0.1 * batch / 256)
        optimizer, scheduler = DigitTask(recipe).build_optimizer(torch.nn.Linear(2, 2), 20)
        rates = []
        for _ in range(schedule.total_steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert abs(int(np.argmax(rates)) - schedule.warmup_steps) <= 1  # the peak after warmup_steps steps
        assert max(rates) == pytest.approx(schedule.peak_lr) and rates[-1] < schedule.peak_lr / 1000
    assert DigitRecipe().schedule(20).warmup_steps == DigitRecipe().warmup_steps
    assert DigitRecipe(min_steps=0, epochs=2).schedule(10).warmup_steps == 5  # a quarter of a short run at most


def test_old_run_recipes_still_load():
    values = DigitRecipe().to_dict()
    values.pop("warmup_steps"), values.pop("min_steps")
    values["warmup_fraction"] = 0.1
    assert DigitRecipe.from_dict(values).model == DigitModelConfig()


def plain_digits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n digits of 4 fonts, 16-22 pixels tall, shifted by up to 4 pixels, ink and background in
    random colours: (pixels (n, 32, 32, 3) uint8, digits (n,)) — a small set that is quick to learn."""
    fonts = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneralItalic.ttf")
    pixels, labels = np.empty((n, 32, 32, 3), np.uint8), rng.integers(0, 10, n)
    for i, digit in enumerate(labels):
        glyph = synth_digits._glyphs(fonts[rng.integers(len(fonts))], int(rng.integers(16, 23)))[digit]
        mask = np.zeros((32, 32))
        h, w = glyph.mask.shape
        top, left = (32 - h) // 2 + rng.integers(-4, 5), (32 - w) // 2 + rng.integers(-4, 5)
        top, left = int(np.clip(top, 0, 32 - h)), int(np.clip(left, 0, 32 - w))
        mask[top : top + h, left : left + w] = glyph.mask / 255.0
        ink, background = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        while abs(int(ink.mean()) - int(background.mean())) < 60:
            ink = rng.integers(0, 256, 3)
        pixels[i] = np.round(background + mask[..., None] * (ink - background.astype(float)))
    return pixels, labels


def test_the_recipe_learns_a_small_set_far_above_chance():
    """500 digits, the recipe's rules with a narrower network, a batch of 64 at a peak rate of 0.1
    and a shorter minimum: 8 epochs alone would be 56 steps; stretched to 200, the recipe leaves
    chance (10 %) far behind on digits it never saw."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order on any machine
    try:
        accuracy = _train_plain_digits()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.4, accuracy


def _train_plain_digits() -> float:
    rng = np.random.default_rng(0)
    train_pixels, train_digits = plain_digits(rng, 500)
    test_pixels, test_digits = plain_digits(rng, 300)
    recipe = DigitRecipe(model=DigitModelConfig(width=1), batch_size=64, lr=0.4, min_steps=200, warmup_steps=20)
    task = DigitTask(recipe)
    plan = batch_plan(recipe.batch_size, 1, len(train_digits))
    assert (
        recipe.epochs * plan.steps_per_epoch
        < recipe.min_steps
        <= task.epochs_for(plan.steps_per_epoch) * plan.steps_per_epoch
    )
    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, plan.steps_per_epoch)
    for epoch in range(task.epochs_for(plan.steps_per_epoch)):
        order = rng.permutation(len(train_digits))[: plan.steps_per_epoch * plan.global_batch].reshape(
            plan.steps_per_epoch, -1
        )
        batches = ({"pixels": train_pixels[i], "label": train_digits[i]} for i in order)
        train_one_epoch(
            model, task, batches, optimizer, scheduler, device="cpu", generator=torch.Generator().manual_seed(epoch)
        )
    return evaluate(model, task, [{"pixels": test_pixels, "label": test_digits}], device="cpu")["accuracy"]
