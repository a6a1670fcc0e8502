"""A resume runs on its own recipe's learning-rate schedule: a changed optim.lr / decoder_lr applies from the resumed
step on (Lightning restores the checkpoint's param groups and scheduler base lrs over the new ones), the step right
after a resume never runs at a stale lr of 0, and an unchanged resume keeps an uninterrupted run's lrs exactly."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pixelqa.train.schedule import build_scheduler, rebase_scheduler, warmup_cosine

WARMUP = 0.3  # 6 steps: ceil(1.8) = 2 warm-up steps; 8 steps: ceil(2.4) = 3


def _fit(work: Path, name: str, *extra: str) -> str:
    args = [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=32",
        "data.synthetic_val=8",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=0",
        "eval.after_fit=false",  # the learning rates are the subject, not the scores
        f"optim.warmup_ratio={WARMUP}",
        f"output_dir={work / name}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]
    run = subprocess.run([sys.executable, "-m", "pixelqa.fit", *args], cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run.stdout + run.stderr


def _lrs(work: Path, name: str, group: str) -> dict[int, float]:
    """The learning rate each optimizer step of the MLflow run that `name`'s checkpoints name ran at."""
    run_id = (work / name / "checkpoints" / "mlflow_run_id.txt").read_text().strip()
    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    return {m.step: m.value for m in client.get_metric_history(run_id, f"lr-AdamW/{group}")}


def _param_groups(path: Path) -> list[dict]:
    return torch.load(path, map_location="cpu", weights_only=False)["optimizer_states"][0]["param_groups"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """A 6-step run at the recipe's defaults (lr 3e-3, decoder_lr 1e-4, weight_decay 0), checkpoints every 2 steps."""
    work = tmp_path_factory.mktemp("resume_lr")
    _fit(work, "ref", "trainer.max_steps=6")
    return work


def test_schedule_values_used_below():
    # hand-computed: 6 steps: warm-up 2, then cosine over the remaining 4 (progress (step - 2) / 4); 8 steps: warm-up
    # 3, cosine over 5
    assert warmup_cosine(4, 6, WARMUP) == pytest.approx(0.5)
    assert warmup_cosine(5, 6, WARMUP) == pytest.approx(0.5 * (1 - math.sqrt(0.5)))
    assert warmup_cosine(4, 8, WARMUP) == pytest.approx(0.5 * (1 + math.cos(0.2 * math.pi)))
    assert warmup_cosine(7, 8, WARMUP) == pytest.approx(0.5 * (1 + math.cos(0.8 * math.pi)))


@pytest.mark.slow
def test_a_longer_resume_with_changed_optimizer_settings_uses_them_from_the_resumed_step(ref):
    step4 = ref / "ref" / "checkpoints" / "step000004.ckpt"
    assert {g["weight_decay"] for g in _param_groups(step4)} == {0.0}
    changes = ("optim.lr=1e-6", "optim.decoder_lr=2e-6", "optim.weight_decay=0.05", "optim.betas=[0.8,0.99]")
    out = _fit(ref, "changed", f"ckpt={step4}", "trainer.max_steps=8", *changes)
    assert "optim.lr: 0.003 -> 1e-06" in out and "optim.weight_decay: 0.0 -> 0.05" in out
    main, decoder = _lrs(ref, "changed", "main"), _lrs(ref, "changed", "mask_decoder")
    assert sorted(main) == [4, 5, 6, 7]
    # the new base lrs on the 8-step schedule from the resumed step on: not the restored 6-step schedule's 0.5 at
    # step 4 (nor its 0 at step 6, where a longer run went on at a stale lr of 0), nor 3e-3 scaled by the new one
    assert main[4] == pytest.approx(1e-6 * 0.5 * (1 + math.cos(0.2 * math.pi)), rel=1e-9)
    assert main[7] == pytest.approx(1e-6 * 0.5 * (1 + math.cos(0.8 * math.pi)), rel=1e-9)
    assert decoder[4] == pytest.approx(2e-6 * 0.5 * (1 + math.cos(0.2 * math.pi)), rel=1e-9)
    # what steps 4-7 updated with: the new weight_decay and betas in every group (Lightning restored the old ones)
    groups = _param_groups(ref / "changed" / "checkpoints" / "step000008.ckpt")
    assert [g["name"] for g in groups] == ["main", "mask_decoder"]
    assert all(g["weight_decay"] == 0.05 and tuple(g["betas"]) == (0.8, 0.99) for g in groups)


@pytest.mark.slow
def test_plain_resume_keeps_the_uninterrupted_lrs(ref):
    step4 = ref / "ref" / "checkpoints" / "step000004.ckpt"
    out = _fit(ref, "resumed", "trainer.max_steps=6", f"ckpt={step4}")
    assert "resuming with changed settings" not in out
    for group in ("main", "mask_decoder"):
        before, resumed = _lrs(ref, "ref", group), _lrs(ref, "resumed", group)
        assert sorted(resumed) == [4, 5]
        assert [resumed[s] for s in (4, 5)] == [before[s] for s in (4, 5)], group  # exact, not approximate
    # the optimizer's settings too (lr, betas, weight_decay of every group), as an uninterrupted run has them
    last = [_param_groups(ref / name / "checkpoints" / "step000006.ckpt") for name in ("ref", "resumed")]
    assert last[0] == last[1]


def test_rebase_scheduler_sets_new_base_lrs_at_the_restored_step():
    weight = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.AdamW([{"params": [weight], "lr": 1e-3}])
    old_sched = build_scheduler(old, 6, WARMUP)
    for _ in range(4):
        old.step()
        old_sched.step()
    new = torch.optim.AdamW([{"params": [weight], "lr": 1e-6}])
    sched = build_scheduler(new, 6, WARMUP)
    new.load_state_dict(old.state_dict())  # what Lightning's restore does after configure_optimizers
    sched.load_state_dict(old_sched.state_dict())
    assert new.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # the checkpoint's lr, not the recipe's
    rebase_scheduler(sched, [1e-6])
    assert new.param_groups[0]["lr"] == pytest.approx(1e-6 * 0.5)
    assert new.param_groups[0]["initial_lr"] == sched.base_lrs[0] == 1e-6
    new.step()
    sched.step()
    assert new.param_groups[0]["lr"] == pytest.approx(1e-6 * 0.5 * (1 - math.sqrt(0.5)))
    with pytest.raises(ValueError, match="base_lrs: got 2 values"):
        rebase_scheduler(sched, [1e-6, 1e-6])
