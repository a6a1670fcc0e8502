"""DDP with 2 CPU processes (gloo) on the tiny model: both ranks train, rank 0 reports, the steps add up."""

import os
import socket
import subprocess
import sys

import torch


def test_ddp_two_cpu_processes(tmp_path):
    args = [
        "recipe=stage3",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=false",
        "data.global_batch_size=4",  # 2 per process x 2 processes: no accumulation
        "data.batch_size=2",
        "data.val_batch_size=2",
        "data.synthetic_train=32",
        "data.synthetic_val=8",
        f"data.shards={tmp_path / 'shards'}",
        f"output_dir={tmp_path / 'run'}",
        "tracking=none",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", *args],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert out.count("==== PixelQA fit summary ====") == 1  # rank 0 reports once
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert "val/J&F: " in proc.stdout


def test_too_few_validation_samples_are_reported_once_and_every_rank_exits_2(tmp_path):
    # Both ranks started here, as Lightning starts its second one (LOCAL_RANK set): each one's status is seen, and
    # no launcher stops one when the other exits (torchrun would)
    args = [
        "recipe=stage3",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=1",
        "trainer.enable_progress_bar=false",
        "data.global_batch_size=4",
        "data.batch_size=2",
        "data.synthetic_train=8",
        "data.synthetic_val=8",
        "data.val_samples=1",  # 1 validation sample for 2 processes
        f"data.shards={tmp_path / 'shards'}",
        f"output_dir={tmp_path / 'run'}",
        "tracking=none",
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pixelqa.fit", *args],
            cwd=tmp_path,
            env=dict(env, LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    error = "recipe error: data.val_sources / data.val_samples / eval.max_samples: 1 validation samples for 2 processes"
    assert [p.returncode for p in procs] == [2, 2], outs[1][-3000:]
    assert [out.count(error) for out in outs] == [1, 0], outs[1][-3000:]


def test_only_rank_zero_reports_an_error_every_rank_raises_alike():
    from pixelqa.config import RecipeError
    from pixelqa.fit import reports_error
    from pixelqa.train.datamodule import EveryRankError

    assert reports_error(EveryRankError("x"), rank_zero=True) and not reports_error(EveryRankError("x"), False)
    assert reports_error(RecipeError("x"), rank_zero=True) and reports_error(RecipeError("x"), rank_zero=False)
