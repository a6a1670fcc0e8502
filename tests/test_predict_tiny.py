"""`python -m pixelqa.predict --model tiny`: the tiny model with random weights, as the demo's `--model tiny`, said
to be random in one line; a file or folder named `tiny` in the working directory is still read as a path."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pixelqa.predict.__main__ import main
from pixelqa.predict.loading import TINY_NOTE, load_model


def test_predict_runs_the_random_tiny_model_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    argv = ["--model", "tiny", "--media", "img.png", "--text", "What is [0]?", "--point", "30,40"]
    code = main([*argv, "--max-new-tokens", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.splitlines().count(TINY_NOTE) == 1 and "random weights" in TINY_NOTE
    assert f"outputs: {tmp_path / 'out'}" in out
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model"]["format"] == "tiny (random weights)" and run["model"]["device"] == "cpu"
    assert (tmp_path / "out" / "masks.json").is_file()


def test_a_path_named_tiny_is_a_path_and_a_missing_model_names_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("not a model")
    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    code = main(["--model", "tiny", "--media", "img.png", "--text", "Hi", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and TINY_NOTE not in err and "--model" in err  # read as the file it is: no PixelQA checkpoint
    code = main(["--model", "nowhere", "--media", "img.png", "--text", "Hi", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (
        "error: --model: 'nowhere' does not exist; expected a model folder, a checkpoint file or 'tiny' (random)"
    )


def test_load_model_builds_tiny_on_cpu_unless_a_device_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, info = load_model("tiny")
    assert info["path"] == "tiny" and info["device"] == "cpu" and not model.training
    assert model.cfg.preset == "tiny" and model.cfg.mask_decoder.pred_obj_scores is False
