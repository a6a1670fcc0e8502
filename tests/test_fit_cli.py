"""The main job as a user meets it: --print-config, checkpoints during training without extra keys, Ctrl-C prints
a resume command that works, library noise filtered, and the closing report says where everything is."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pixelqa.train.callbacks import default_checkpoint_interval

# Messages our dependencies print during a plain fit (seen before filtering); none is actionable by a user.
NOISE = (
    "is_gradient_checkpointing",
    "LeafSpec",
    "litlogger",
    "Creating initial MLflow database tables",
    "GPU available",
)


def _fit(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pixelqa.fit", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a shell's background job inherits an ignored SIGINT; Ctrl-C must reach this process as it does in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_print_config_prints_the_resolved_recipe_and_exits_0(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", "recipe=stage3", "trainer.max_steps=7", "--print-config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recipe = yaml.safe_load(proc.stdout)
    assert recipe["stage"] == 3 and recipe["trainer"]["max_steps"] == 7 and recipe["model"]["preset"] == "tiny"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()  # nothing ran
    bad = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", "recipe=stage3", "trainer.max_step=7", "--print-config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown key 'trainer.max_step'" in bad.stderr and "Traceback" not in bad.stderr


def test_default_checkpoint_interval():
    assert [default_checkpoint_interval(n) for n in (2, 23, 500, 10_000, 185_625)] == [10, 10, 100, 1000, 1000]


def _epoch_warnings(names: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lightning's own sync_dist warnings for epoch-level values logged without it, as if under DDP."""
    import warnings

    from lightning.pytorch.trainer.connectors.logger_connector import result
    from lightning.pytorch.utilities.rank_zero import WarningCache

    monkeypatch.setattr(result, "_distributed_is_initialized", lambda: True)
    monkeypatch.setattr(result, "warning_cache", WarningCache())  # Lightning says each message once per process
    monkeypatch.delenv("PIXELQA_LIBRARY_WARNINGS", raising=False)
    collection = result._ResultCollection(training=False)
    for name in names:
        collection.log("on_validation_epoch_end", name, torch.tensor(0.5), batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from pixelqa.quiet import silence_library_noise

        silence_library_noise()
        collection.metrics(on_step=False)
    return [str(w.message) for w in caught]


def test_ddp_epoch_metrics_already_summed_over_ranks_do_not_ask_for_sync_dist(monkeypatch):
    # the values of UniPixelModule.on_validation_epoch_end (torchmetrics states summed over ranks by compute())
    ours = ["val/J", "val/F", "val/J&F", "val/J-recall", "val/F-decay", "val/qa_acc", "val/acc/region_qa"]
    assert _epoch_warnings(ours, monkeypatch) == []
    # any other value logged per epoch without sync_dist is a real mistake under DDP: still said
    said = _epoch_warnings(["val/loss", "val/Jaccard"], monkeypatch)
    assert len(said) == 2 and all("sync_dist=True" in m for m in said), said


@pytest.mark.slow(seconds=40)
def test_ctrl_c_prints_a_resume_command_that_finishes_the_run(tmp_path):
    steps = 23  # not a multiple of the default interval (10): the final step is saved too
    args = [
        "recipe=stage3",
        "data.synthetic_train=32",
        "data.synthetic_val=8",
        "data.val_samples=4",
        "data.batch_size=2",
        f"trainer.max_steps={steps}",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=2",
    ]
    ckpts = tmp_path / "runs" / "stage3" / "checkpoints"
    victim = _fit(args, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None and not (ckpts / "last.ckpt").is_file():
        time.sleep(0.1)
    assert victim.poll() is None, (
        "the run finished (or failed) before it could be interrupted:\n" + victim.stdout.read()
    )
    time.sleep(0.5)  # last.ckpt is renamed into place before ModelCheckpoint returns; let the step file follow
    victim.send_signal(signal.SIGINT)
    out = victim.communicate(timeout=120)[0]
    assert victim.returncode == 130, out[-3000:]
    assert not any(n in out for n in NOISE), [n for n in NOISE if n in out]
    assert "Traceback" not in out
    hint = out.strip().splitlines()
    assert hint[-2].startswith("interrupted. Resume from its last checkpoint")
    command = shlex.split(hint[-1])
    assert command[:3] == ["python", "-m", "pixelqa.fit"] and command[3:] == [*args, "ckpt=last"]
    stopped_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= stopped_at < steps  # saved during training, with no checkpoint key in the recipe

    # Run the printed command; with PIXELQA_LIBRARY_WARNINGS=1 the filtered messages come back (the check above bites).
    resumed = _fit(command[3:], tmp_path, PIXELQA_LIBRARY_WARNINGS="1")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == steps
    assert any(n in out for n in NOISE)
    report = out.split("==== PixelQA fit results ====", 1)[1]
    lines = dict(line.split(":", 1) for line in report.strip().splitlines() if not line.startswith(" "))
    assert Path(lines["checkpoint"].strip()) == (ckpts / "last.ckpt").resolve()
    overlays = Path(lines["overlays"].split("  (")[0].strip())
    assert overlays == (tmp_path / "runs" / "stage3" / "overlays" / f"step{steps:06d}").resolve()
    files = list(overlays.iterdir())
    assert files and all(p.suffix in (".png", ".gif") for p in files)
    assert lines["view"].strip() == f"mlflow ui --backend-store-uri sqlite:///{(tmp_path / 'mlruns.db').resolve()}"
    assert (tmp_path / "runs" / "stage3" / "recipe.yaml").is_file()


def test_the_printed_evaluate_command_scores_the_samples_the_fit_validated(tmp_path):
    from pixelqa.config import load_recipe, to_object
    from pixelqa.fit import where_report

    args = [f"output_dir={tmp_path}", "data.val_samples=8", "tracking=none"]
    line = where_report(to_object(load_recipe(args)), args, None, []).splitlines()[-1]
    assert line.startswith("evaluate:") and shlex.split(line)[-1] == "eval.max_samples=8"
    mine = [*args, "eval.max_samples=3"]  # the user's own cap stays the only one
    line = where_report(to_object(load_recipe(mine)), mine, None, []).splitlines()[-1]
    assert line.count("max_samples") == 1 and line.endswith("eval.max_samples=3 ckpt=last")
