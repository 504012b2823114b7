"""Learning-rate scaling and schedule, optimiser groups and the weight EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from internimage.train import ModelEma, WarmupCosineSchedule, scaled_lr


def _optimizer(lr_scales: tuple[float, ...] = (1.0,)) -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in lr_scales]
    return torch.optim.AdamW(groups, lr=1.0)


def test_scaled_lr_is_linear_in_the_total_batch() -> None:
    assert scaled_lr(5e-4, 512) == pytest.approx(5e-4)
    assert scaled_lr(5e-4, 1024) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 128) == pytest.approx(1.25e-4)
    with pytest.raises(ValueError):
        scaled_lr(5e-4, 0)


def test_warmup_then_cosine_to_min() -> None:
    optimizer = _optimizer((1.0, 0.5))
    schedule = WarmupCosineSchedule(
        optimizer, base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=110
    )
    values = []
    for _ in range(110):
        values.append(schedule.apply())
        assert optimizer.param_groups[0]["lr"] == values[-1]
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5 * values[-1])
        schedule.step()
    assert values[0] == pytest.approx(1e-6)
    assert values[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert values[10] == pytest.approx(1e-3)  # peak right after warm-up
    assert values[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way down the cosine
    assert values[35] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)))
    assert all(a <= b for a, b in zip(values[:10], values[1:11], strict=True))
    assert all(a >= b for a, b in zip(values[10:-1], values[11:], strict=True))
    assert schedule.value(110) == pytest.approx(1e-5)  # min lr at the end
    state = schedule.state_dict()
    other = WarmupCosineSchedule(
        _optimizer(), base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, total_steps=110
    )
    other.load_state_dict(state)
    assert other.apply() == pytest.approx(schedule.apply())


def test_schedule_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        WarmupCosineSchedule(_optimizer(), base_lr=1, warmup_lr=0, min_lr=0, warmup_steps=5,
                             total_steps=3)


def test_ema_update_math() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(4, 3))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    now = model.state_dict()
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * start[name] + 0.1 * now[name]
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(value, now[name])  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_decay() -> None:
    ema = ModelEma(nn.Linear(2, 2), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.updates = 10**6
    assert ema.current_decay() == pytest.approx(0.999)


def test_model_param_groups_exempt_1d_params_from_decay() -> None:
    import internimage

    model = internimage.create_model("internimage_atto", num_classes=10)
    groups = model.param_groups(0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            one_d = p.ndim <= 1 or names[id(p)].endswith(".bias")
            assert group["weight_decay"] == (0.0 if one_d else 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    decayed = model.param_groups(0.05, layer_decay=0.5)
    scales = {g["lr_scale"] for g in decayed}
    assert max(scales) == 1.0 and min(scales) < 1e-3


def test_warmup_then_poly_decay_to_min() -> None:
    """mmseg's poly schedule: (1 - progress) ** power after the warm-up."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    schedule = WarmupCosineSchedule(optimizer, base_lr=1.0, warmup_lr=0.0, min_lr=0.1,
                                    warmup_steps=2, total_steps=12, decay="poly", power=2.0)
    assert [schedule.value(s) for s in (0, 1)] == [0.0, 0.5]
    for step in range(2, 13):
        progress = (step - 2) / 10
        assert schedule.value(step) == pytest.approx(0.1 + 0.9 * (1 - progress) ** 2)
    with pytest.raises(ValueError, match="decay"):
        WarmupCosineSchedule(optimizer, base_lr=1.0, warmup_lr=0.0, min_lr=0.0, warmup_steps=0,
                             total_steps=1, decay="exponential")
