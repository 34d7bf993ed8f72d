import pytest
import torch

from pose import precision as precision_module
from pose.keypoint_task import KeypointRecipe, KeypointTask, keypoint_loss
from pose.precision import Precision, training_precision


class PlainTask:
    pass


def test_auto_uses_bf16_on_cpus_that_have_it_for_tasks_that_gain(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    task = KeypointTask(KeypointRecipe())
    assert training_precision("cpu", "auto", task) == Precision(torch.bfloat16, channels_last=True)
    assert training_precision("cpu", "auto", PlainTask()) == Precision(None, channels_last=False)
    assert training_precision("cpu", "fp32", task) == Precision(None, channels_last=False)
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert training_precision("cpu", "auto", task) == Precision(None, channels_last=False)
    assert training_precision("cpu", "bf16", PlainTask()) == Precision(torch.bfloat16, channels_last=True)
    # GPUs: bf16 for every model; fp32 keeps channels-last, which costs nothing there.
    assert training_precision("cuda", "auto", PlainTask()) == Precision(torch.bfloat16, channels_last=True)
    assert training_precision("cuda", "fp32", task) == Precision(None, channels_last=True)
    with pytest.raises(ValueError, match="fp8"):
        training_precision("cpu", "fp8")


def test_a_bf16_cpu_step_keeps_float32_weights_and_follows_the_float32_step():
    recipe = KeypointRecipe(input_size=(64, 96), deconv_channels=32)
    task = KeypointTask(recipe)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 96, 64)
    target = torch.rand(4, 17, 24, 16) * 0.1
    weight = torch.ones(4, 17)
    losses, grads = {}, {}
    for setting in ("fp32", "bf16"):
        torch.manual_seed(1)
        arithmetic = training_precision("cpu", setting, task)
        model = arithmetic.prepare(task.build_model())
        with arithmetic.autocast(torch.device("cpu")):
            loss = keypoint_loss(model(images), target, weight)
        loss.backward()
        assert loss.dtype == torch.float32
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        losses[setting], grads[setting] = loss.item(), model.final.weight.grad.flatten()
    assert training_precision("cpu", "bf16", task).describe() == "bf16, channels-last"
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    # bf16 keeps 8 bits of mantissa: the gradient points the same way, not to the last digit.
    assert torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.95


def test_inference_is_bf16_only_where_it_was_measured_faster(monkeypatch):
    from pose.precision import inference_precision

    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert inference_precision("cpu") == Precision(torch.bfloat16, channels_last=True)
    assert inference_precision("cpu", "fp32") == Precision(None, channels_last=False)
    assert inference_precision("cuda") == Precision(None, channels_last=False)
    assert inference_precision("cuda", "bf16") == Precision(torch.bfloat16, channels_last=True)
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert inference_precision("cpu") == Precision(None, channels_last=False)
