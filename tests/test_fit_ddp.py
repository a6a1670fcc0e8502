"""DDP with 2 CPU processes (gloo) on the tiny model: both ranks train, rank 0 reports, the steps add up."""

import os
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
