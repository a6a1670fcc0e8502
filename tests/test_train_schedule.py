"""Warm-up + cosine schedule: values by hand, and the LambdaLR on a real optimizer."""

import math

import pytest
import torch

from pixelqa.train.schedule import build_scheduler, warmup_cosine, warmup_steps


def test_warmup_then_cosine_by_hand():
    # 100 steps, 3 % warm-up -> 3 warm-up steps: 1/3, 2/3, 1; then cosine over the remaining 97 steps
    assert warmup_steps(100, 0.03) == 3
    assert [warmup_cosine(s, 100, 0.03) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert warmup_cosine(3, 100, 0.03) == pytest.approx(1.0)
    mid = 3 + 97 / 2
    assert warmup_cosine(int(mid), 100, 0.03) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert warmup_cosine(100, 100, 0.03) == pytest.approx(0.0)
    assert warmup_cosine(5, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_drives_every_param_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 2e-5}, {"params": [b], "lr": 5e-6}], lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([2e-5 / 2, 5e-6 / 2])  # step 0 of 2 warm-up steps
    assert seen[1] == pytest.approx([2e-5, 5e-6])
    assert seen[-1][0] < seen[2][0]


def test_bad_ratio_is_named():
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(10, 1.5)
