"""`python -m pixelqa.data`: expected failures are one line `error: ...` with status 2, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_video import build_repacked_pickle_vos

from pixelqa.data import shards
from pixelqa.data.__main__ import main

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter (what a user sees: status and stderr)."""
    return subprocess.run([sys.executable, "-m", "pixelqa.data", *args], capture_output=True, text=True, env=ENV)


def user_error(capsys, *args: str) -> str:
    """Run in process; assert status 2 and a single `error: ...` line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def damaged_davis(root: Path) -> None:
    """A Ref-DAVIS17 re-pack whose video 'zebra' has one frame more than its masks (every expression rejected)."""
    build_repacked_pickle_vos(root, "davis", "valid")
    meta_path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["zebra"]["frames"].append("00010")
    frames = root / "DAVIS" / "JPEGImages" / "480p" / "zebra"
    (frames / "00010.jpg").write_bytes((frames / "00005.jpg").read_bytes())
    meta_path.write_text(json.dumps(meta))


def test_damaged_build_without_skip_is_one_line_status_2(tmp_path):
    damaged_davis(tmp_path / "raw")
    r = cli("build", "ref_davis17", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--split", "valid")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ref_davis17/valid item") and "zebra" in lines[0]
    assert lines[0].endswith("(use --on-error skip to record and skip such samples)")


def test_rebuild_with_other_settings_and_corrupt_state_files(tmp_path, capsys):
    args = ["build", "synthetic", "--out", str(tmp_path), "--split", "val", "--max-count", "10", "--quiet"]
    main([*args, "--max-samples", "12"])
    capsys.readouterr()
    err = user_error(capsys, *args, "--max-samples", "13")
    assert "a complete build with other options" in err and "manifest.json" in err
    assert "(--max-samples 12 then, 13 in this command)" in err  # the option that differs, named
    (tmp_path / "synthetic" / "val" / "manifest.json").write_text('{"source": "synth')  # cut short
    err = user_error(capsys, *args, "--max-samples", "12")
    assert "manifest.json: not valid JSON" in err


def test_corrupt_raw_meta_json_is_one_line(tmp_path, capsys):
    build_repacked_pickle_vos(tmp_path, "davis", "valid")
    meta = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.write_text(meta.read_text()[:-40])
    args = ["build", "ref_davis17", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--split", "valid"]
    err = user_error(capsys, *args, "--quiet")
    assert "ref_davis17/valid raw data" in err and "meta_expressions.json: not valid JSON" in err


def test_unknown_source_or_split_and_missing_shards(tmp_path, capsys):
    assert "source: got 'nope'" in user_error(capsys, "build", "nope", "--out", str(tmp_path))
    assert "split: got 'test'" in user_error(capsys, "build", "ref_davis17", "--out", str(tmp_path), "--split", "test")
    err = user_error(capsys, "stats", str(tmp_path / "nonexistent"))
    assert "nonexistent is neither a .tar file nor a folder" in err
    r = cli("stats", "/nonexistent")
    assert r.returncode == 2 and r.stderr.startswith("error: shards: /nonexistent") and "Traceback" not in r.stderr


def test_mixture_reports_every_missing_source_and_creates_nothing(tmp_path, capsys):
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "sources:\n  - {name: osprey_conversation}\n  - {name: synthetic, split: val}\n"
        "  - {name: revos, split: train}\n"
    )
    (tmp_path / "raw").mkdir()
    out = tmp_path / "shards"
    err = user_error(capsys, "mixture", str(mix), "--root", str(tmp_path / "raw"), "--out", str(out), "--quiet")
    assert "raw files missing for 2 of 3 sources" in err
    assert "source osprey_conversation (raw root" in err and "source revos (raw root" in err
    assert not out.exists()
    mix.write_text("sources: [{name: synthetic, repeat: 0}")  # broken YAML
    err = user_error(capsys, "mixture", str(mix), "--root", str(tmp_path / "raw"), "--out", str(out))
    assert "mix.yaml: not valid YAML" in err
    mix.write_text("sources:\n  - {name: synthetic, split: val}\n")
    err = user_error(capsys, "mixture", str(mix), "--root", str(tmp_path / "raw"), "--out", str(out), "--roots", "x")
    assert err == "error: --roots: got 'x', expected NAME=PATH"


def test_ctrl_c_during_build_is_one_line_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    args = ["build", "synthetic", "--split", "train", "--max-samples", "60", "--max-count", "16", "--quiet"]
    main([*args, "--out", str(tmp_path / "clean")])
    real_close = shards._ShardSink.close
    calls = {"n": 0}

    def interrupted_close(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_close(self, *a, **k)

    monkeypatch.setattr(shards._ShardSink, "close", interrupted_close)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: build stopped") and "rerun the same command to resume" in err
    folder = tmp_path / "a" / "synthetic" / "train"
    assert len(list(folder.glob("*.tar"))) == 2 and not (folder / "manifest.json").exists()
    monkeypatch.setattr(shards._ShardSink, "close", real_close)
    main([*args, "--out", str(tmp_path / "a")])  # the same command: resumes
    assert "60 samples in 4 shards" in capsys.readouterr().out
    clean = sorted((tmp_path / "clean" / "synthetic" / "train").glob("*.tar"))
    assert [p.read_bytes() for p in sorted(folder.glob("*.tar"))] == [p.read_bytes() for p in clean]


def test_closed_stdout_pipe_exits_quietly():
    p = subprocess.Popen(
        [sys.executable, "-m", "pixelqa.data", "cards"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    p.stdout.close()  # the reader is gone before anything is written, as `| head` after its lines
    _, err = p.communicate(timeout=120)
    assert err.decode() == "" and p.returncode == 141


def test_real_ctrl_c_with_workers_is_one_line_and_resumes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pixelqa.data", "build", "synthetic", "--out", str(out), "--quiet"]
    cmd += ["--max-samples", "600", "--max-count", "50", "--workers", "2"]
    folder = out / "synthetic" / "train"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.tar"))) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the build finished before the signal arrived")
    assert p.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "rerun the same command to resume" in err
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and "600 samples in 12 shards" in r.stdout
    assert "resuming synthetic/train after" in r.stderr


def test_a_launched_build_checks_its_raw_files_and_launcher_before_submitting(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    build = ["build", "refcoco", "--root", str(tmp_path / "nonexistent"), "--out", str(out)]
    err = user_error(capsys, *build, "launcher=subprocess")  # not in a job's log, later
    assert err == user_error(capsys, *build) and "nonexistent" in err  # the very line a build here gives
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - {name: revos, split: train}\n  - {name: synthetic, split: val}\n")
    err = user_error(
        capsys, "mixture", str(mix), "--root", str(tmp_path / "raw"), "--out", str(out), "launcher=subprocess"
    )
    assert "raw files missing for 1 of 2 sources, nothing submitted" in err and "source revos" in err
    synthetic = ["build", "synthetic", "--split", "val", "--out", str(out)]
    assert "launcher.nodez" in user_error(capsys, *synthetic, "launcher=subprocess", "launcher.nodez=2")
    assert "launcher.nodes" in user_error(capsys, *synthetic, "launcher=subprocess", "launcher.nodes=many")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    err = user_error(capsys, *synthetic, "launcher=slurm")
    assert "launcher=slurm: sbatch and srun not found on PATH" in err
    assert "only build and mixture submit jobs" in user_error(capsys, "stats", str(out), "launcher=slurm")
    assert not out.exists()  # nothing submitted, no job state written


def test_build_into_a_read_only_folder_is_one_line_before_any_work(tmp_path, capsys):
    # it was an OSError traceback with status 1 from the first folder the build made
    from test_preflight import _read_only_folder

    ro = _read_only_folder(tmp_path)
    out = ro / "shards"
    try:
        line = user_error(capsys, "build", "synthetic", "--out", str(out), "--max-samples", "4", "--quiet")
    finally:
        if ro.is_relative_to(tmp_path):
            ro.chmod(0o755)
    assert line.startswith(f"error: --out={out}: cannot write in {ro} ") and line.endswith("expected a writable folder")
