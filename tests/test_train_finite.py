"""A step whose objective or gradient is NaN / inf stops the run before its update (every rank alike), with one line
and exit 1 from the CLI; weights holding NaN / inf are refused at init_from= and ckpt= (a recipe error, exit 2)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from fit_fixtures import checkpointing_fit_args

from pixelqa import fit
from pixelqa.config import RecipeError
from pixelqa.model import unipixel as U
from pixelqa.train import module as M
from pixelqa.train.finite import NonFiniteStepError, check_finite_weights
from pixelqa.train.module import UniPixelModule


def _args(work: Path, name: str, *extra: str) -> list[str]:
    return checkpointing_fit_args(work, name, *extra)


def _steps_saved(run: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("step")) for p in (run / "checkpoints").glob("step*.ckpt"))


def _all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_the_cli_stops_a_diverging_run_with_one_line_and_exit_1(tmp_path):
    extra = ("trainer.max_steps=6", "optim.lr=1e6", "optim.decoder_lr=1e6", "optim.warmup_ratio=0")
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", *_args(tmp_path, "nan", *extra)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("training stopped at optimizer step ")
    assert "(the step objective is not finite)" in last and "optim.lr=1000000.0" in last
    step = int(last.removeprefix("training stopped at optimizer step ").split(":")[0])
    saved = _steps_saved(tmp_path / "nan")
    # checkpoints after each of the `step` steps done before it, none after: its update was never applied
    assert saved == list(range(1, step + 1))
    assert all(_all_finite(tmp_path / "nan" / "checkpoints" / f"step{s:06d}.ckpt") for s in saved)


def _poison_lm_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Make the LM term of the `at`-th training forward (0-based) NaN, as a diverged forward would give it."""
    real = U.UniPixel.forward
    seen = [0]

    def forward(self, batch, *args, **kwargs):
        out = real(self, batch, *args, **kwargs)
        if self.training:
            if seen[0] == at:
                out.sums["lm"] = out.sums["lm"] * math.nan
            seen[0] += 1
        return out

    monkeypatch.setattr(U.UniPixel, "forward", forward)


def test_a_nan_objective_stops_before_its_update_and_names_the_step_the_term_and_the_lrs(tmp_path, monkeypatch):
    _poison_lm_at(monkeypatch, 2)  # accumulation 1: the third optimizer step, step 2 counted from 0
    with pytest.raises(NonFiniteStepError) as caught:  # what pixelqa.grid's cells get
        fit.run(_args(tmp_path, "lm", "trainer.max_steps=5", "optim.lr=3e-4"))
    said = str(caught.value)
    assert said.startswith("training stopped at optimizer step 2: train/lm is nan (the step objective is not finite)")
    assert "optim.lr=0.0003" in said and "main " in said and "mask_decoder " in said
    assert "\n" not in said
    assert _steps_saved(tmp_path / "lm") == [1, 2]
    assert _all_finite(tmp_path / "lm" / "checkpoints" / "step000002.ckpt")


def test_a_nan_gradient_with_a_finite_objective_stops_too(tmp_path, monkeypatch):
    real = UniPixelModule.on_train_start

    def on_train_start(self):
        real(self)
        param = next(p for p in self.model.l2m.parameters() if p.requires_grad)
        param.register_hook(lambda g: g * math.nan if self.trainer.global_step == 1 else g)

    monkeypatch.setattr(UniPixelModule, "on_train_start", on_train_start)
    with pytest.raises(NonFiniteStepError, match=r"^training stopped at optimizer step 1: the gradient norm is not "):
        fit.run(_args(tmp_path, "grad", "trainer.max_steps=3"))
    assert _steps_saved(tmp_path / "grad") == [1]


def test_weights_with_nan_are_refused_at_init_from_and_at_resume(tmp_path):
    fit.run(_args(tmp_path, "ok", "trainer.max_steps=1"))
    ckpt = torch.load(tmp_path / "ok" / "checkpoints" / "step000001.ckpt", map_location="cpu", weights_only=False)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and "l2m" in k)
    ckpt["state_dict"][name][0] = math.inf
    poisoned = tmp_path / "poisoned.ckpt"
    torch.save(ckpt, poisoned)
    expected = rf"{re.escape(str(poisoned))}: 1 of \d+ stored weight tensors hold NaN/inf \({re.escape(name)}: 1 of "
    with pytest.raises(RecipeError, match="^init_from=" + expected):
        fit.run(_args(tmp_path, "init", "trainer.max_steps=1", f"init_from={poisoned}"))
    with pytest.raises(RecipeError, match="^ckpt=" + expected):
        fit.run(_args(tmp_path, "ok", "trainer.max_steps=2", f"ckpt={poisoned}"))


def test_the_refusal_names_the_first_tensors_with_nan_or_inf():
    state = {
        "a": torch.ones(3),
        "b": torch.tensor([1.0, math.nan, -math.inf, 2.0]),
        "steps": torch.tensor(7),
        "c": torch.full((2, 2), math.nan),
        "d": torch.tensor([math.inf]),
        "e": torch.tensor([math.nan]),
    }
    with pytest.raises(RecipeError) as caught:
        check_finite_weights(state, "init_from=x.ckpt")
    assert str(caught.value).startswith(
        "init_from=x.ckpt: 4 of 5 stored weight tensors hold NaN/inf (b: 2 of 4 values; c: 4 of 4 values; "
        "d: 1 of 1 values; ...); refused"
    )
    check_finite_weights({"a": torch.ones(2), "steps": torch.tensor(3)}, "init_from=y.ckpt")  # nothing to refuse


def _step_module(values: dict[str, float], grad: float, scaler: object = None) -> tuple[SimpleNamespace, object]:
    """What `UniPixelModule.on_before_optimizer_step` reads of its module, and an optimizer whose one parameter
    holds the gradient `grad`."""
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([grad, 0.0])
    optimizer = torch.optim.AdamW([{"params": [param], "lr": 1e-4, "name": "main"}])
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), global_step=7)
    module = SimpleNamespace(
        _step_values=dict(values),
        trainer=trainer,
        device=torch.device("cpu"),
        optim_cfg={"lr": 1e-4},
        _micro_step=1,  # the last micro-batch of its optimizer step
        accumulate=1,
    )
    return module, optimizer


FINITE = {"lm": 2.0, "focal": 0.1, "dice": 0.5, "iou": 0.2, "objectness": 0.7, "loss": 9.0}


def test_fp16_loss_scaling_keeps_its_inf_gradients_to_itself():
    module, optimizer = _step_module(FINITE, math.inf)
    with pytest.raises(NonFiniteStepError, match="the gradient norm is not finite"):
        UniPixelModule.on_before_optimizer_step(module, optimizer)
    # the GradScaler skips such a step and lowers its scale: not a failure of the run
    module, optimizer = _step_module(FINITE, math.inf, scaler=object())
    UniPixelModule.on_before_optimizer_step(module, optimizer)
    module, optimizer = _step_module({**FINITE, "dice": math.nan}, 0.0, scaler=object())
    with pytest.raises(NonFiniteStepError, match=r"step 7: train/dice is nan \(the step objective is not finite\)"):
        UniPixelModule.on_before_optimizer_step(module, optimizer)


def _rank(rank: int, init: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        values = {**FINITE, "lm": math.nan} if rank == 1 else FINITE  # only rank 1's objective is NaN
        module, optimizer = _step_module(values, 0.0)
        try:
            UniPixelModule.on_before_optimizer_step(module, optimizer)
            results[rank] = "went on"
        except NonFiniteStepError as err:
            results[rank] = str(err)
        torch.distributed.barrier()  # both reach this: neither hangs in a collective the other skipped
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_stops_when_one_ranks_objective_is_not_finite(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", results), nprocs=2, join=True)
    assert results[1].startswith("training stopped at optimizer step 7: train/lm is nan")
    assert results[0].startswith("training stopped at optimizer step 7: train/lm is not finite on another rank")


def test_under_ddp_both_ranks_stop_at_the_same_step_and_rank_0_says_it_once(tmp_path):
    extra = (
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "data.global_batch_size=4",  # 2 per process x 2 processes: no accumulation
        "trainer.max_steps=5",
        "optim.lr=1e6",
        "optim.decoder_lr=1e6",
        "optim.warmup_ratio=0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", *_args(tmp_path, "ddp", *extra)],
        cwd=tmp_path,
        env=dict(os.environ, TQDM_DISABLE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "training stopped" in line]
    assert len(said) == 1 and said[0].startswith("training stopped at optimizer step ")
    assert "Traceback" not in done.stderr
    step = int(said[0].removeprefix("training stopped at optimizer step ").split(":")[0])
    assert _steps_saved(tmp_path / "ddp") == list(range(1, step + 1))


def _count_flag_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the step checks: calls of the flag function `on_before_optimizer_step` builds its all-reduce from."""
    calls = []
    real = M.step_flags

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(M, "step_flags", counted)
    return calls


def test_the_check_runs_once_per_optimizer_step_when_called_on_every_micro_batch(monkeypatch):
    # DeepSpeed accumulates itself: Lightning calls the hook after every micro-batch, not only at the step's end
    calls = _count_flag_calls(monkeypatch)
    module, optimizer = _step_module(FINITE, 0.0)
    module.accumulate = 2
    for micro_step in (1, 2, 3, 4):  # two optimizer steps of 2 micro-batches (the counter after each batch start)
        module._micro_step = micro_step
        UniPixelModule.on_before_optimizer_step(module, optimizer)
    assert len(calls) == 2
    # a NaN of a step's first micro-batch survives the skipped call and stops the step at its end
    module._step_values = {**FINITE, "dice": torch.tensor(math.nan)}
    module._micro_step = 5
    UniPixelModule.on_before_optimizer_step(module, optimizer)
    module._micro_step = 6
    with pytest.raises(NonFiniteStepError, match=r"step 7: train/dice is nan \(the step objective is not finite\)"):
        UniPixelModule.on_before_optimizer_step(module, optimizer)
    assert len(calls) == 3


def test_device_tensor_terms_are_flagged_and_shown_with_their_values():
    values = {**FINITE, "lm": torch.tensor(math.inf), "loss": torch.tensor(math.inf), "dice": torch.tensor(0.5)}
    module, optimizer = _step_module(values, 0.0)
    with pytest.raises(NonFiniteStepError, match=r"step 7: train/lm is inf \(the step objective is not finite\)"):
        UniPixelModule.on_before_optimizer_step(module, optimizer)
    flags = M.step_flags(["lm", "dice", "focal"], values, torch.tensor(math.nan), torch.device("cpu"))
    assert flags.tolist() == [1.0, 0.0, 0.0, 1.0]  # focal absent: finite; the gradient norm NaN


@pytest.mark.parametrize("global_batch", [False, True])
def test_with_accumulation_2_a_nan_in_a_steps_first_micro_batch_stops_that_step(tmp_path, monkeypatch, global_batch):
    calls = _count_flag_calls(monkeypatch)
    _poison_lm_at(monkeypatch, 2)  # forwards 0-1 are step 0, 2-3 step 1: the NaN is step 1's first micro-batch
    extra = ("data.global_batch_size=4",) if global_batch else ("trainer.accumulate_grad_batches=2",)
    with pytest.raises(NonFiniteStepError) as caught:
        fit.run(_args(tmp_path, "acc", "trainer.max_steps=4", *extra))
    assert str(caught.value).startswith(
        "training stopped at optimizer step 1: train/lm is nan (the step objective is not finite)"
    )
    assert len(calls) == 2  # once per optimizer step: steps 0 and 1
    assert _steps_saved(tmp_path / "acc") == [1]


def test_a_training_step_keeps_its_terms_on_the_device_and_the_first_nan_of_the_step(monkeypatch):
    # the plain training_step (a Batch, not a StepBatch): no float() of a term, and a NaN is not overwritten
    module = SimpleNamespace(_step_values={}, log=lambda *a, **k: None)
    module._hold_value = lambda name, value: UniPixelModule._hold_value(module, name, value)
    outs = [
        SimpleNamespace(loss=torch.tensor(1.0), losses={"lm": torch.tensor(math.nan), "dice": torch.tensor(0.2)}),
        SimpleNamespace(loss=torch.tensor(2.0), losses={"lm": torch.tensor(3.0), "dice": torch.tensor(0.4)}),
    ]
    for out in outs:
        module.model = lambda batch, out=out: out
        UniPixelModule.training_step(module, SimpleNamespace(size=1), 0)
    kept = module._step_values
    assert all(isinstance(v, torch.Tensor) for v in kept.values())
    assert math.isnan(float(kept["lm"])) and float(kept["dice"]) == pytest.approx(0.4) and float(kept["loss"]) == 2.0
