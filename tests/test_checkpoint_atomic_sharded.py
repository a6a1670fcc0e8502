"""Checkpoints that every rank writes (DeepSpeed folders) appear whole under their name or not at all, and a write
that fails on one rank ends every rank with the error instead of leaving the others at a barrier.

- A failure mid-write (some files written) leaves the older folder of that name as it was; `ckpt=last` resumes from
  it; no temporary is left. A kill mid-write leaves a `.NAME.tmp~...` folder that no resume picks and that the next
  save removes, saying so. A real ZeRO-2 engine on 2 CPU ranks (gloo) checks both ranks' failures.
- DDP (2 CPU ranks, `pixelqa.fit`): rank 0's checkpoint write failing with a full disk ends both ranks with status 2,
  rank 0 saying why in one line, instead of rank 1 waiting at Lightning's barrier.
- FSDP (full state dicts: rank 0 writes one file) writes through the atomic CheckpointIO.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from deepspeed_scripts import IMPORT_DEEPSPEED, WRAPPER
from ports import free_port

from pixelqa import fit
from pixelqa.config import load_recipe, to_object
from pixelqa.files import TEMP_MARK
from pixelqa.train.checkpoint_io import (
    AtomicCheckpointIO,
    AtomicDeepSpeedStrategy,
    CheckpointWriteError,
    save_folder_on_every_rank,
)
from pixelqa.train.guards import read_resume_metadata
from pixelqa.train.strategies import build_strategy

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")


def _ds_checkpoint(folder: Path, step: int) -> None:
    """A DeepSpeed checkpoint folder as Lightning's strategy writes it (tag `checkpoint`, Lightning's entries in
    rank 0's model states) at `step`; stands for the `write` of one rank."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    states = {"module": {"w": torch.full((2,), float(step))}, "global_step": step, "pixelqa_stage": 3}
    torch.save(states, folder / "checkpoint" / "mp_rank_00_model_states.pt")


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _no_meeting() -> None:
    """`after_failure` of a single process: nobody to meet."""


def test_a_failed_folder_write_keeps_the_older_folder_whole_and_a_good_one_replaces_it(tmp_path):
    target = tmp_path / "checkpoints" / "step000002.ckpt"
    save_folder_on_every_rank(target, lambda tmp: _ds_checkpoint(tmp, 1), _no_meeting)
    assert read_resume_metadata(target)["global_step"] == 1

    def fails_half_way(tmp: Path) -> None:
        _ds_checkpoint(tmp, 2)  # the model states written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError) as failed:
        save_folder_on_every_rank(target, fails_half_way, _no_meeting)
    said = str(failed.value)
    assert len(said.splitlines()) == 1 and str(target) in said and "no space left on the device" in said
    assert read_resume_metadata(target)["global_step"] == 1  # the older checkpoint, untouched
    assert _names(target.parent) == {"step000002.ckpt"}  # no temporary left

    (target / "checkpoint" / "only_in_the_old_one.pt").write_bytes(b"x")
    save_folder_on_every_rank(target, lambda tmp: _ds_checkpoint(tmp, 2), _no_meeting)
    assert read_resume_metadata(target)["global_step"] == 2
    assert sorted(p.name for p in (target / "checkpoint").iterdir()) == ["mp_rank_00_model_states.pt"]  # whole
    assert _names(target.parent) == {"step000002.ckpt"}  # the old one renamed aside, then removed


KILLED = """
import os, signal, sys, torch
from pathlib import Path
from pixelqa.train.checkpoint_io import save_folder_on_every_rank

def write_then_die(tmp):
    (tmp / "checkpoint").mkdir()
    torch.save({"global_step": 2}, tmp / "checkpoint" / "mp_rank_00_model_states.pt")
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write: the optimizer states never come

save_folder_on_every_rank(Path(sys.argv[1]), write_then_die, lambda: None)
"""


def test_a_save_killed_mid_write_is_never_resumed_from_and_the_next_save_removes_it(tmp_path, capsys):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    _ds_checkpoint(ckpt_dir / "step000001.ckpt", 1)
    (ckpt_dir / "last.ckpt").symlink_to("step000001.ckpt")
    killed = subprocess.run([sys.executable, "-c", KILLED, str(ckpt_dir / "step000002.ckpt")], timeout=300)
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in ckpt_dir.iterdir() if TEMP_MARK in p.name]
    assert [p.name.startswith(".step000002.ckpt" + TEMP_MARK) for p in left] == [True]
    assert (left[0] / "checkpoint" / "mp_rank_00_model_states.pt").is_file()  # a half checkpoint, but not named as one
    assert not (ckpt_dir / "step000002.ckpt").exists()

    recipe = to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path / 'run'}", "ckpt=last"]))
    resume = fit.resolve_ckpt(recipe)
    assert resume == ckpt_dir / "last.ckpt" and read_resume_metadata(resume)["global_step"] == 1

    # the next run's first save removes it, and names it
    save_folder_on_every_rank(ckpt_dir / "step000002.ckpt", lambda tmp: _ds_checkpoint(tmp, 2), _no_meeting)
    assert not left[0].exists() and left[0].name in capsys.readouterr().err
    assert _names(ckpt_dir) == {"step000001.ckpt", "step000002.ckpt", "last.ckpt"}


def test_deepspeed_removes_a_checkpoint_folder_by_renaming_it_first(tmp_path, monkeypatch):
    strategy = AtomicDeepSpeedStrategy.__new__(AtomicDeepSpeedStrategy)  # no DeepSpeed engine needed to remove
    monkeypatch.setattr(AtomicDeepSpeedStrategy, "is_global_zero", True)
    target = tmp_path / "step000001.ckpt"
    _ds_checkpoint(target, 1)
    removing, rmtree = [], shutil.rmtree

    def rmtree_seen(path: Path, ignore_errors: bool = False) -> None:
        removing.append((Path(path).name, target.exists()))  # a kill from here on leaves no half `target`
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", rmtree_seen)
    strategy.remove_checkpoint(str(target))
    assert [(name.startswith(".step000001.ckpt" + TEMP_MARK), there) for name, there in removing] == [(True, False)]
    assert list(tmp_path.iterdir()) == []


def test_fsdp_writes_its_single_checkpoint_file_atomically():
    fsdp = to_object(load_recipe(["recipe=stage3", "trainer=fsdp", "model=unipixel-7b"]))
    assert isinstance(build_strategy(fsdp).checkpoint_io, AtomicCheckpointIO)


DS_RANK = (
    """
import datetime, errno, json, os, sys, torch
folder, rank, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
"""
    + IMPORT_DEEPSPEED
    + """
deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=60))  # a hang fails the test
from pixelqa.config import load_recipe, to_object
from pixelqa.train.strategies import build_strategy
torch.manual_seed(0)

"""
    + WRAPPER
    + """

net = Wrapper()
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
engine, *_ = deepspeed.initialize(model=net, model_parameters=[p for p in net.parameters() if p.requires_grad],
                                  config=config)
strategy = build_strategy(to_object(load_recipe(["recipe=stage3", "trainer=deepspeed", "data.batch_size=1"])))
strategy.model = engine  # what Lightning's DeepSpeed setup leaves there (its setup needs CUDA)
target = os.path.join(folder, "step000002.ckpt")

def train_step():
    engine.backward(engine(torch.randn(2, 3)).sum())
    engine.step()

def weights():
    return {k: v.clone() for k, v in net._forward_module.model.l2m.state_dict().items()}

def save(step, failing_rank=None):
    real = engine.checkpoint_engine.save
    def disk_full_at_the_optimizer_states(state_dict, path):
        if "optim_states" in str(path):  # rank 0 has written its model states by then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state_dict, path)
    if rank == failing_rank:
        engine.checkpoint_engine.save = disk_full_at_the_optimizer_states
    try:
        strategy.save_checkpoint({"global_step": step, "pixelqa_stage": 3}, target)
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    finally:
        engine.checkpoint_engine.save = real
    return None

report = {}
train_step()
report["first"] = save(1)
good = weights()
if rank == 0:
    os.symlink("step000002.ckpt", os.path.join(folder, "last.ckpt"))
train_step()
report["rank0_fails"] = save(2, failing_rank=0)
report["rank1_fails"] = save(2, failing_rank=1)
_, client = engine.load_checkpoint(os.path.join(folder, "last.ckpt"), load_module_strict=False)  # ckpt=last
report["resumed_step"] = client["global_step"]
report["resumed_weights"] = all(torch.equal(v, good[k]) for k, v in weights().items())
train_step()
report["second"] = save(2)
with open(os.path.join(folder, f"report{rank}.json"), "w") as f:
    json.dump(report, f)
"""
)


def _two_ranks(command: Callable[[int], tuple[list[str], dict]], timeout: float) -> tuple[list[int], list[str]]:
    """Run ranks 0 and 1 together (`command(rank)`: argv and Popen keywords); their exit codes and outputs. Both
    are killed when the wait ends, so a rank left waiting for the other fails the test instead of hanging it."""
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
        for argv, kwargs in map(command, (0, 1))
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outs


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_on_two_ranks_a_failed_write_keeps_the_older_folder_and_ends_both_ranks(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    port = str(free_port())
    codes, outs = _two_ranks(lambda rank: ([sys.executable, "-c", DS_RANK, str(folder), str(rank), port], {}), 600)
    assert codes == [0, 0], (outs[0][-3000:], outs[1][-3000:])
    reports = [json.loads((folder / f"report{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["first"] for r in reports] == [None, None]
    # the failing rank says its disk error, the other one stops with it (no wait at DeepSpeed's barrier)
    assert [r["rank0_fails"][0] for r in reports] == ["CheckpointWriteError", "PeerCheckpointError"]
    assert [r["rank1_fails"][0] for r in reports] == ["PeerCheckpointError", "CheckpointWriteError"]
    assert "no space left on the device" in reports[0]["rank0_fails"][1]
    assert "failed on rank 1" in reports[0]["rank1_fails"][1] and "no space left" in reports[0]["rank1_fails"][1]
    # ckpt=last resumed the step-1 checkpoint, weights and all: neither failed write touched it
    assert [(r["resumed_step"], r["resumed_weights"]) for r in reports] == [(1, True), (1, True)]
    # the good write replaced it whole; nothing else is left beside it
    assert [r["second"] for r in reports] == [None, None]
    assert read_resume_metadata(folder / "last.ckpt")["global_step"] == 2
    assert _names(folder) == {"step000002.ckpt", "last.ckpt", "report0.json", "report1.json"}


FULL_DISK_ON_RANK_0 = """
import errno, os, sys
import pixelqa.train.checkpoint_io as checkpoint_io

def disk_full(checkpoint, path):
    with open(path, "wb") as f:
        f.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")

if os.environ["LOCAL_RANK"] == "0":
    checkpoint_io._torch_save = disk_full
from pixelqa.fit import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_ddp_rank_zero_failing_to_write_a_checkpoint_ends_both_ranks(tmp_path):
    # Both ranks started here, as Lightning starts its second one (LOCAL_RANK set): no launcher stops one when the
    # other exits (torchrun would), so a rank left waiting shows as a timeout
    args = [
        "recipe=stage3",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "data.global_batch_size=4",
        "data.batch_size=2",
        "data.val_batch_size=2",
        "data.synthetic_train=8",
        "data.synthetic_val=4",
        "eval.after_fit=false",
        f"data.shards={tmp_path / 'shards'}",
        f"output_dir={tmp_path / 'run'}",
        "tracking=none",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env["NODE_RANK"] = "0"
    codes, outs = _two_ranks(
        lambda rank: (
            [sys.executable, "-c", FULL_DISK_ON_RANK_0, *args],
            {"cwd": tmp_path, "env": dict(env, LOCAL_RANK=str(rank))},
        ),
        240,
    )
    assert codes == [2, 2], (outs[0][-3000:], outs[1][-3000:])
    said = [line for line in outs[0].splitlines() if line.startswith("recipe error: ")]
    assert len(said) == 1 and "step000001.ckpt: not written (no space left on the device)" in said[0], outs[0][-3000:]
    assert "Traceback" not in outs[1] and "recipe error" not in outs[1], outs[1][-3000:]  # rank 0 said it
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert not any(p.name.endswith(".ckpt") for p in ckpt_dir.iterdir())  # no half file under a checkpoint's name
