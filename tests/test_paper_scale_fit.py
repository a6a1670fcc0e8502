"""`python -m pixelqa.fit recipe=stage3 scale=paper model=unipixel-3b model.path=<released-format fixture>` on
converter fixtures of 1080p images (ReasonSeg) and 720p videos (Ref-YouTube-VOS): 3 optimizer steps on CPU, no
sample dropped or cut, and the budgets, redraw counts and checkpoint cadence visible in MLflow."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_image import build_reasonseg
from fixtures_video import build_palette_vos
from mlflow import MlflowClient
from PIL import Image

from pixelqa.data.shards import build_shards
from pixelqa.train.datamodule import SourceIndex

FIXTURE = Path("/work/shared/data/unipixel-official-tiny/checkpoint")


def _upscale(folder: Path, size: tuple[int, int], pattern: str) -> None:
    """Every matching file rewritten at `size` (label PNGs with nearest neighbours, so masks stay masks)."""
    for p in folder.rglob(pattern):
        im = Image.open(p)
        im.resize(size, Image.NEAREST if im.mode == "P" else Image.BILINEAR).save(p)


@pytest.mark.slow(seconds=30)
@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared released-format fixture not present")
def test_stage3_paper_scale_on_1080p_images_and_720p_videos(tmp_path):
    raw, shards = tmp_path / "raw", tmp_path / "shards"
    build_reasonseg(raw / "reasonseg")
    _upscale(raw / "reasonseg", (1920, 1080), "*.jpg")
    build_palette_vos(raw / "ytvos", "train")
    _upscale(raw / "ytvos", (1280, 720), "*.jpg")
    _upscale(raw / "ytvos", (1280, 720), "*.png")
    for source, folder, split in (
        ("reasonseg", "reasonseg", "train"),
        ("reasonseg", "reasonseg", "val"),
        ("ref_youtube_vos", "ytvos", "train"),
    ):
        assert build_shards(source, raw / folder, shards, split, progress=False)["num_rejects"] == 0
    assert SourceIndex(shards, "reasonseg", "train").read(0).media.size == (1080, 1920)
    assert SourceIndex(shards, "ref_youtube_vos", "train").read(0).media.size == (720, 1280)

    args = [
        "recipe=stage3",
        "scale=paper",
        "model=unipixel-3b",
        f"model.path={FIXTURE}",
        "trainer.max_steps=3",
        f"data.shards={shards}",
        "data.sources=[{name: reasonseg, split: train, repeat: 1}, {name: ref_youtube_vos, split: train, repeat: 1}]",
        "data.val_sources=[{name: reasonseg, split: val, repeat: 1}]",
        "data.build_if_missing=false",
        "data.batch_size=1",
        "data.val_batch_size=1",
        "data.global_batch_size=2",  # 2 micro-batches per step: the step's loss spans both
        "data.num_frames=8",
        f"output_dir={tmp_path / 'run'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "collate dropped" not in out and "collate truncated" not in out

    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "last.ckpt").is_symlink() and sorted(p.name for p in ckpts.glob("step*.ckpt")) == [
        "step000003.ckpt"
    ]
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["pixelqa_stream"]["global_batch"] == 2
    assert ckpt["pixelqa_base"]["path"] == str(FIXTURE) and len(ckpt["pixelqa_base"]["config_sha256"]) == 64
    frozen = [k for k in ckpt["state_dict"] if "visual.blocks.0.attn.qkv.base_layer" in k]
    assert not frozen  # the frozen base is referenced, not stored

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("pixelqa").experiment_id])[0]
    params, metrics = run.data.params, run.data.metrics
    assert params["budget/image_tokens"] == "128-2048" and params["budget/frame_tokens"] == "128-256"
    assert params["checkpoint/every_n_steps"] == "1000" and params["checkpoint/keep"] == "3"
    assert metrics["data/redraws"] == 0 and metrics["data/dropped_slots"] == 0
    assert metrics["data/truncated_samples"] == 0
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3  # one value per optimizer step
