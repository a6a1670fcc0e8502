"""Small defects of fit's path: the learning rate logged once per optimizer step under gradient accumulation,
NaN init_from weights refused before recipe.yaml is written, ckpt=last when a kill left its DeepSpeed folder as
`.NAME.old`, and --print-config showing the accumulation the run uses."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from fit_fixtures import checkpointing_fit_args, mlflow_fit_args, mlflow_history

from pixelqa import fit
from pixelqa.config import RecipeError, load_recipe, to_object
from pixelqa.train.datamodule import EveryRankError


# optim.warmup_ratio=0.25: 4 steps warm up over ceil(1.0) = 1, 5 steps over ceil(1.25) = 2; then cosine to 0 over the
# rest, 0.5 (1 + cos(pi (step - warm) / (total - warm))): at progress 0, 1/3 and 2/3 the factor is 1, 0.75 and 0.25
@pytest.mark.parametrize(
    "steps, every, factors",
    [(4, 1, {0: 1.0, 1: 1.0, 2: 0.75, 3: 0.25}), (5, 2, {1: 1.0, 3: 0.75, 4: 0.25})],
)
def test_each_optimizer_step_logs_its_learning_rate_once_under_accumulation(tmp_path, steps, every, factors):
    extra = (
        f"trainer.max_steps={steps}",
        f"trainer.log_every_n_steps={every}",
        "trainer.accumulate_grad_batches=2",
        "data.batch_size=1",
        "optim.lr=1e-3",
        "optim.decoder_lr=1e-4",
        "optim.warmup_ratio=0.25",
    )
    fit.run(mlflow_fit_args(tmp_path, "run", *extra))
    logged = mlflow_history(tmp_path, "run")
    assert {k for k in logged if k.startswith("lr-")} == {"lr-AdamW/main", "lr-AdamW/mask_decoder"}
    for key, base in (("lr-AdamW/main", 1e-3), ("lr-AdamW/mask_decoder", 1e-4)):
        assert {step: len(values) for step, values in logged[key].items()} == dict.fromkeys(factors, 1), key
        for step, factor in factors.items():
            assert logged[key][step][0] == pytest.approx(base * factor, rel=1e-9), (key, step)
    assert sorted(logged["train/loss"]) == sorted(factors)  # the same steps as the step metrics


def test_init_from_with_nan_weights_is_refused_before_recipe_yaml(tmp_path):
    poisoned = tmp_path / "stage2.ckpt"
    weight = torch.ones(2, 3)
    weight[1, 2] = math.nan
    torch.save(
        {"pixelqa_stage": 2, "state_dict": {"model.a.weight": torch.ones(4), "model.b.weight": weight}}, poisoned
    )
    run = tmp_path / "run"
    args = [*mlflow_fit_args(tmp_path, "run", "trainer.max_steps=1", f"init_from={poisoned}"), "tracking=none"]
    with pytest.raises(EveryRankError) as caught:  # every rank reads the same file: rank 0 alone says so
        fit.run(args)
    assert str(caught.value).startswith(
        f"init_from={poisoned}: 1 of 2 stored weight tensors hold NaN/inf (model.b.weight: 1 of 6 values); refused"
    )
    assert not (run / "recipe.yaml").exists()
    assert not (run / "checkpoints").exists()


def test_resume_metadata_is_read_once_per_start_and_again_when_the_file_changes(tmp_path, monkeypatch):
    from pixelqa.train import guards

    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 3, "pixelqa_recipe": {"seed": 0}, "state_dict": {"w": torch.ones(2)}}, ckpt)
    reads: list[Path] = []
    real = guards._safe_metadata_load
    monkeypatch.setattr(guards, "_safe_metadata_load", lambda p, *a: reads.append(Path(p)) or real(p, *a))
    with guards.metadata_cache():  # as fit's start holds it
        first = guards.read_resume_metadata(ckpt)
        first["pixelqa_recipe"]["seed"] = 7  # a caller's edit stays its own
        second = guards.read_resume_metadata(str(ckpt))
        assert reads == [ckpt] and second == {"global_step": 3, "pixelqa_recipe": {"seed": 0}}
        # a newer checkpoint at the same path (a later save): read again, its own entries
        torch.save({"global_step": 5, "pixelqa_recipe": {"seed": 0}, "state_dict": {"w": torch.ones(3)}}, ckpt)
        os.utime(ckpt, ns=(0, ckpt.stat().st_mtime_ns + 10**9))
        stamp = (ckpt.stat().st_size, ckpt.stat().st_mtime_ns)
        assert guards.read_resume_metadata(ckpt)["global_step"] == 5 and reads == [ckpt, ckpt]
        assert guards.read_resume_metadata(ckpt, trust=True)["global_step"] == 5  # another reading mode: not shared
    # outside a start nothing is kept: every call reads (a rewrite within one clock tick could keep the stamp)
    torch.save({"global_step": 6, "pixelqa_recipe": {"seed": 0}, "state_dict": {"w": torch.ones(3)}}, ckpt)
    os.utime(ckpt, ns=(0, stamp[1]))
    assert (ckpt.stat().st_size, ckpt.stat().st_mtime_ns) == stamp  # the step-5 file's size and mtime
    assert guards.read_resume_metadata(ckpt)["global_step"] == 6 and len(reads) == 3


def test_a_resumed_fit_reads_its_checkpoints_entries_once(tmp_path, monkeypatch):
    from pixelqa.train import guards

    fit.run(checkpointing_fit_args(tmp_path, "run", "trainer.max_steps=1"))
    reads: list[Path] = []
    real = guards._read_resume_metadata
    monkeypatch.setattr(guards, "_read_resume_metadata", lambda p, *a: reads.append(Path(p).name) or real(p, *a))
    fit.run(checkpointing_fit_args(tmp_path, "run", "trainer.max_steps=2", "ckpt=last"))
    assert reads == ["last.ckpt"]  # the trained-set check and the settings check: one read (two before)


def _kill_between_renames(ckpt_dir: Path, name: str) -> None:
    """Replace the DeepSpeed-style folder `ckpt_dir/name` with `install_folder` in a process that is killed (SIGKILL)
    between its two renames: what a real kill there leaves on disk."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from pixelqa import files
        target = Path({str(ckpt_dir / name)!r})
        tmp = files.folder_temp(target)
        (tmp / "checkpoint").mkdir()
        (tmp / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"new")
        real_rename = os.rename
        def rename(src, dst):
            if Path(src) == tmp:  # the old folder is aside as .NAME.old by now
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(src, dst)
        files.os.rename = rename
        files.install_folder(tmp, target)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]


def _deepspeed_folder(path: Path) -> None:
    (path / "checkpoint").mkdir(parents=True)
    (path / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"old")


@pytest.mark.parametrize("given", ["last", "folder"])
def test_resume_puts_back_a_checkpoint_folder_a_kill_left_aside(tmp_path, capsys, given):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    _deepspeed_folder(ckpt_dir / "step000004.ckpt")
    os.symlink("step000004.ckpt", ckpt_dir / "last.ckpt")  # as StepCheckpoint links it
    _kill_between_renames(ckpt_dir, "step000004.ckpt")
    assert not (ckpt_dir / "step000004.ckpt").exists() and (ckpt_dir / ".step000004.ckpt.old").is_dir()
    ckpt = "last" if given == "last" else str(ckpt_dir / "step000004.ckpt")
    recipe = to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path / 'run'}", f"ckpt={ckpt}"]))
    resumed = fit.resolve_ckpt(recipe)
    assert resumed == (ckpt_dir / "last.ckpt" if given == "last" else ckpt_dir / "step000004.ckpt")
    assert (ckpt_dir / "step000004.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt").read_bytes() == b"old"
    assert not (ckpt_dir / ".step000004.ckpt.old").exists()
    assert f"note: restored {ckpt_dir / 'step000004.ckpt'}" in capsys.readouterr().err


def test_resume_without_a_folder_to_put_back_is_still_refused(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    os.symlink("step000004.ckpt", ckpt_dir / "last.ckpt")
    recipe = to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path / 'run'}", "ckpt=last"]))
    with pytest.raises(RecipeError, match=r"^ckpt=last: no checkpoint at "):
        fit.resolve_ckpt(recipe)


def test_print_config_shows_the_accumulation_the_run_uses(capsys):
    # data.global_batch_size wins: 8 / (data.batch_size 2 x 1 process) = 4 micro-batches per optimizer step
    assert fit.run(["recipe=stage3", "data.global_batch_size=8", "data.batch_size=2", "--print-config"]) == {}
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["accumulate_grad_batches"] == 4
    assert printed["data"]["global_batch_size"] == 8
    # a value the run would refuse is refused here too, not printed as if it would run
    with pytest.raises(SystemExit) as exited:
        fit.main(
            [
                "recipe=stage3",
                "data.global_batch_size=8",
                "data.batch_size=2",
                "trainer.accumulate_grad_batches=2",
                "--print-config",
            ]
        )
    assert exited.value.code == 2
    assert "recipe error: trainer.accumulate_grad_batches=2 disagrees with data.global_batch_size=8" in (
        capsys.readouterr().err
    )
