"""pose.ema against MMPose's own ExpMomentumEMA (tests/data/goldens/recipes.json "rtmpose-ema", made by
tools/make_recipe_goldens.py): the same averaged values after every update, buffers included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pose.ema import ExpMomentumEMA

GOLDEN = json.loads((Path(__file__).parent / "data" / "goldens" / "recipes.json").read_text())["rtmpose-ema"]


def test_updates_equal_mmposes_exp_momentum_ema():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ExpMomentumEMA(model, momentum=GOLDEN["momentum"])
    for source, expected in zip(GOLDEN["sources"], GOLDEN["averaged"]):
        with torch.no_grad():
            for key, value in model.state_dict().items():
                value.copy_(torch.tensor(source[key], dtype=value.dtype))
        ema.update(model)
        averaged = ema.module.state_dict()
        assert set(averaged) == set(expected)
        for key, value in expected.items():
            if isinstance(value, int):  # num_batches_tracked: the first update's copy, as mmengine keeps it
                assert int(averaged[key]) == value
            else:
                assert averaged[key].flatten().tolist() == pytest.approx(
                    torch.tensor(value).flatten().tolist(), rel=1e-6, abs=1e-7
                ), key
    assert ema.steps == len(GOLDEN["sources"])


def test_the_average_is_frozen_and_resumes():
    model = torch.nn.Linear(2, 2)
    ema = ExpMomentumEMA(model)
    assert not any(p.requires_grad for p in ema.module.parameters()) and all(
        p.requires_grad for p in model.parameters()
    )
    ema.update(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    again = ExpMomentumEMA(torch.nn.Linear(2, 2))
    again.load_state_dict(ema.state_dict())
    assert again.steps == 2 and torch.equal(again.module.weight, ema.module.weight)
    # early updates follow the model closely: momentum (1 - m) exp(-2 / 2000) + m, about 0.999
    assert torch.allclose(ema.module.weight, model.weight - 1.0 + 0.999, atol=1e-3)
    with pytest.raises(ValueError, match="gamma"):
        ExpMomentumEMA(model, gamma=0)
