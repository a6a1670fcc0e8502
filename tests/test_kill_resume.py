"""Runs stopped the way real life stops them, then continued: nothing trained, validated or set aside is lost.

- A finished run's folder, rerun without ckpt=last, sets its checkpoints aside; following the "start again" hint of
  an interruption before the first checkpoint must not delete them (it did: the near-empty folder replaced them).
- A kill during the validation of a checkpoint step: the resume redoes that validation (its metrics and overlays
  were lost for good when the step was saved before it) and still ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch


def _finished_run(ckpts: Path, steps: tuple[int, ...] = (35, 40)) -> None:
    """What a finished fit leaves in its checkpoints folder: step files, last.ckpt linked to the newest, run id."""
    ckpts.mkdir(parents=True)
    for step in steps:
        (ckpts / f"step{step:06d}.ckpt").write_text(f"weights of step {step}")
    os.symlink(f"step{steps[-1]:06d}.ckpt", ckpts / "last.ckpt")
    (ckpts / "mlflow_run_id.txt").write_text("finished-run\n")


def test_following_the_start_again_hint_keeps_the_set_aside_checkpoints(tmp_path):
    from pixelqa import tracking
    from pixelqa.fit import resume_hint, set_aside_previous

    out = tmp_path / "lose"
    ckpts = out / "checkpoints"
    args = ["recipe=stage3", f"output_dir={out}", "trainer.max_steps=40"]
    _finished_run(ckpts)

    # 1. rerun without ckpt=last: the finished run's checkpoints are set aside
    first = set_aside_previous(ckpts)
    assert first == out / "checkpoints.previous"
    assert (first / "step000040.ckpt").read_text() == "weights of step 40"
    # ... the new run writes its MLflow run id at the start, then Ctrl-C before its first checkpoint
    tracking.save_run_id(ckpts, "interrupted-run")
    hint = resume_hint(args)
    lines = hint.splitlines()
    assert lines[0] == "interrupted before the first checkpoint. Start again with:"
    assert str(first) in hint and "step000040.ckpt" in hint  # the hint says where the trained model went
    back = f"{shlex.join(['rm', '-r', str(ckpts)])} && {shlex.join(['mv', str(first), str(ckpts)])} && "
    assert lines[-1].strip().startswith(back) and lines[-1].endswith("ckpt=last")

    # 2. running the printed command again: a folder holding only the run id is no checkpoint to set aside
    assert set_aside_previous(ckpts) is None
    assert sorted(p.name for p in first.iterdir()) == [
        "last.ckpt",
        "mlflow_run_id.txt",
        "step000035.ckpt",
        "step000040.ckpt",
    ]
    assert (first / "last.ckpt").read_text() == "weights of step 40"
    assert (ckpts / "mlflow_run_id.txt").is_file()  # left where it was: the new run writes its own

    # 3. that run finishes; a later fresh start sets it aside beside, never over, the earlier one
    (ckpts / "step000005.ckpt").write_text("weights of step 5")
    os.symlink("step000005.ckpt", ckpts / "last.ckpt")
    second = set_aside_previous(ckpts)
    assert second == out / "checkpoints.previous-2" and (second / "last.ckpt").read_text() == "weights of step 5"
    assert (first / "last.ckpt").read_text() == "weights of step 40"
    _finished_run(ckpts, (7,))
    assert set_aside_previous(ckpts) == out / "checkpoints.previous-3"
    # the hint names the newest set-aside run
    tracking.save_run_id(ckpts, "another-interrupted-run")
    assert str(out / "checkpoints.previous-3") in resume_hint(args)
    # without a tracking store no run id is written, so no checkpoints folder: nothing to remove before the move
    (ckpts / "mlflow_run_id.txt").unlink()
    ckpts.rmdir()
    assert resume_hint(args).splitlines()[-1].strip().startswith(f"mv {out / 'checkpoints.previous-3'} {ckpts} && ")


def test_a_folder_with_a_deepspeed_checkpoint_is_set_aside(tmp_path):
    from pixelqa.fit import set_aside_previous

    ckpts = tmp_path / "checkpoints"
    (ckpts / "step000010.ckpt" / "checkpoint").mkdir(parents=True)  # DeepSpeed writes a folder per checkpoint
    assert set_aside_previous(ckpts) == tmp_path / "checkpoints.previous"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".step000005.ckpt.tmp~1~host~abcdefgh.ckpt").write_text("a killed save's temporary")
    assert set_aside_previous(tmp_path / "checkpoints") is None


class Interrupt(RuntimeError):
    """Stands for a kill: raised inside training or validation at a chosen step."""


STEPS = 8


def _args(work: Path, name: str, *extra: str) -> list[str]:
    return [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "data.val_samples=4",
        "data.batch_size=2",
        "data.val_batch_size=4",
        f"trainer.max_steps={STEPS}",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.val_check_interval=4",  # steps 4 and 8 both validate and save
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=1",
        "eval.after_fit=false",
        f"output_dir={work / name}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]


def _stop_at(monkeypatch: pytest.MonkeyPatch, hook: str, step: int) -> None:
    """Make the module's `hook` (training_step / validation_step) raise Interrupt at optimizer step `step`."""
    from pixelqa.train.module import UniPixelModule

    original = getattr(UniPixelModule, hook)

    def stopping(self, batch, batch_idx):
        if self.trainer.global_step == step and self.trainer.state.fn == "fit":
            raise Interrupt(f"killed in {hook} at step {step}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(UniPixelModule, hook, stopping)


def _step(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _val_history(work: Path, run_id: str) -> dict[int, float]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    return {m.step: m.value for m in client.get_metric_history(run_id, "val/J_and_F")}


@pytest.mark.slow
def test_a_validation_killed_at_a_checkpoint_step_is_redone_and_the_run_ends_bit_identical(tmp_path, monkeypatch):
    from pixelqa import tracking
    from pixelqa.fit import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run(_args(tmp_path, "ref"))
    ref_id = tracking.load_run_id(tmp_path / "ref" / "checkpoints")

    ckpts = tmp_path / "victim" / "checkpoints"
    overlays = tmp_path / "victim" / "overlays"
    with monkeypatch.context() as m:
        _stop_at(m, "validation_step", 4)
        with pytest.raises(Interrupt):
            run(_args(tmp_path, "victim"))
    # the step-4 checkpoint waits for the step-4 validation: killed during it, the run resumes from step 2
    assert _step(ckpts / "last.ckpt")["global_step"] == 2
    assert not (overlays / "step000004").exists()

    with monkeypatch.context() as m:
        _stop_at(m, "training_step", 5)  # killed again after the step-4 save (taken at the end of its validation)
        with pytest.raises(Interrupt):
            run(_args(tmp_path, "victim", "ckpt=last"))
    assert (overlays / "step000004").is_dir()  # the validation the kill interrupted was done this time
    saved = _step(ckpts / "last.ckpt")
    assert saved["global_step"] == 4
    assert saved["pixelqa_fit_s"] > 0  # time/fit_s carried across resumes

    results = run(_args(tmp_path, "victim", "ckpt=last"))
    assert results["time/fit_s"] > saved["pixelqa_fit_s"]  # the earlier processes' time counted too

    a, b = _step(tmp_path / "ref" / "checkpoints" / "last.ckpt"), _step(ckpts / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # every validation of the uninterrupted run is in the resumed run's history, with the same values
    ref_val = _val_history(tmp_path, ref_id)
    assert len(ref_val) == 2
    assert _val_history(tmp_path, tracking.load_run_id(ckpts)) == ref_val
    assert sorted(p.name for p in overlays.iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "overlays").iterdir()
    )


def test_the_resume_hint_offers_ckpt_last_for_a_deepspeed_checkpoint_folder(tmp_path):
    from pixelqa.fit import resume_hint

    out = tmp_path / "ds"
    step = out / "checkpoints" / "step000010.ckpt"  # DeepSpeed writes a folder under the checkpoint's name
    (step / "checkpoint").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").symlink_to(step.name)
    hint = resume_hint(["recipe=stage3", f"output_dir={out}"])
    assert hint.startswith("interrupted. Resume from its last checkpoint") and hint.endswith("ckpt=last")
    # killed between install_folder's two renames: the folder is only `.step000010.ckpt.old`, last.ckpt dangles;
    # ckpt=last puts it back, so the hint still offers it (it said "before the first checkpoint")
    step.rename(step.with_name(f".{step.name}.old"))
    hint = resume_hint(["recipe=stage3", f"output_dir={out}"])
    assert hint.startswith("interrupted. Resume from its last checkpoint") and hint.endswith("ckpt=last")
