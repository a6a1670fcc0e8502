"""Kill a training run with SIGKILL mid-way, resume it with ckpt=last, and get exactly the uninterrupted run:
same final weights, same final metrics, same MLflow run continued."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

STEPS = 20


def _args(work: Path, name: str, *extra: str) -> list[str]:
    return [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=48",
        "data.synthetic_val=8",
        "data.batch_size=2",
        "data.val_batch_size=4",
        f"trainer.max_steps={STEPS}",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=0",
        f"output_dir={work / name}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]


def _fit(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "pixelqa.fit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _summary(output: str) -> dict[str, float]:
    """The `name: value` lines after the summary header."""
    tail = output.split("==== PixelQA fit summary ====", 1)[1].split("==== PixelQA fit results ====", 1)[0]
    return {k: float(v) for k, v in (line.split(": ", 1) for line in tail.strip().splitlines())}


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow(seconds=60)
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    ref = _fit(_args(tmp_path, "ref"), tmp_path)
    ref_out = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, ref_out[-3000:]

    victim = _fit(_args(tmp_path, "victim"), tmp_path)
    ckpts = tmp_path / "victim" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        done = [p for p in ckpts.glob("step*.ckpt")]
        # step-12 checkpoint started: last.ckpt of step 8 is complete (it is written after the step file)
        if any(int(p.stem[4:10]) >= 12 for p in done):
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed_at = _step_of(ckpts / "last.ckpt")
    assert 8 <= killed_at < STEPS
    run_id = (ckpts / "mlflow_run_id.txt").read_text().strip()

    resumed = _fit(_args(tmp_path, "victim", "ckpt=last"), tmp_path)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert (ckpts / "mlflow_run_id.txt").read_text().strip() == run_id

    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key

    ref_m, res_m = _summary(ref_out), _summary(out)
    for key in ("val/J&F", "val/loss", "val/qa_acc", "train/loss"):
        assert res_m[key] == ref_m[key], key

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert steps[0] < killed_at <= steps[-1]  # one run holds the steps before and after the kill
    assert client.get_run(run_id).info.status == "FINISHED"
