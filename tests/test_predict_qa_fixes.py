"""What a QA pass of `python -m pixelqa.predict` found, each checked against the behaviour it asked for: one line and
exit 2 for a bad input (before the model loads where the check needs no model), nothing of an earlier output lost
or left behind, the API's `PredictInputError` naming the Python argument."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import cached_model
from PIL import Image

from pixelqa.predict import __main__ as cli


def run_cli(argv: list[str], capsys, **kw) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of predict's CLI run in this process."""
    rc = cli.main(argv, **kw)
    said = capsys.readouterr()
    return rc, said.out, said.err


def one_error_line(err: str) -> str:
    """The single `error:` line of stderr (the tiny model's note aside); fails when there are more or none."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note: --model tiny")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    """A 64x48 RGB image."""
    path = tmp_path_factory.mktemp("qa_media") / "img.png"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(path)
    return path


# ---- #2: --trust-checkpoint on a file that will not unpickle -------------------------------------------------------


def _custom_ckpt(path) -> None:
    """A checkpoint holding an instance of a class of the saving script's __main__ (not importable elsewhere)."""
    code = "import sys, torch\nclass Custom: pass\ntorch.save({'state_dict': {}, 'x': Custom()}, sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


@pytest.mark.parametrize("kind", ["png", "zeros", "custom"])
def test_trusted_checkpoint_that_cannot_be_read_is_one_model_line(tmp_path, img, capsys, kind):
    path = tmp_path / f"m.{kind}"
    if kind == "png":
        path.write_bytes(img.read_bytes())
    elif kind == "zeros":
        path.write_bytes(bytes(1000))
    else:
        _custom_ckpt(path)
    argv = ["--model", str(path), "--trust-checkpoint", "--media", str(img), "--text", "hi"]
    rc, _, err = run_cli([*argv, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    line = one_error_line(err)
    assert rc == 2 and line.startswith(f"error: --model: {str(path)!r}")
    if kind == "custom":
        assert "needs class __main__.Custom, which cannot be imported here" in line
    else:
        assert "cannot be read as a checkpoint" in line
    assert not (tmp_path / "out").exists()


def test_trusted_checkpoint_of_a_missing_module_names_it(tmp_path):
    from pixelqa.checkpoints import CheckpointError, safe_torch_load

    path = tmp_path / "m.ckpt"
    code = (
        "import sys, types, torch\nmod = types.ModuleType('qa_gone_module'); sys.modules['qa_gone_module'] = mod\n"
        "class Thing: pass\nThing.__module__ = 'qa_gone_module'; mod.Thing = Thing\n"
        "torch.save({'x': Thing()}, sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    with pytest.raises(CheckpointError, match=r"init_from: .* needs module qa_gone_module, which cannot be imported"):
        safe_torch_load(path, trust=True, what="init_from")
    # the file that does read under trust still loads (the mapping changes errors only)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.ckpt")
    assert torch.equal(safe_torch_load(tmp_path / "ok.ckpt", trust=True)["w"], torch.ones(2))


# ---- #3: an earlier output that cannot be replaced ----------------------------------------------------------------


def as_other_user(script: str, cwd, *args: str) -> subprocess.CompletedProcess:
    """Run a Python script in `cwd` as a user without root's rights (root passes every permission check): as
    `nobody` through setpriv when this is root, else as this user."""
    cmd = [sys.executable, "-c", script, *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's rights")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def skip_unless_other_user_imports(modules: str, cwd) -> None:
    """Skip when the user `as_other_user` runs as cannot import `modules` here: a venv created under umask 077 (CI's)
    or a checkout inside a folder only its owner may enter (`mktemp -d`) is unreadable to `nobody`."""
    probe = as_other_user(f"import {modules}", cwd)
    if probe.returncode != 0:
        pytest.skip(f"the unprivileged user cannot import {modules} here: {probe.stderr.strip().splitlines()[-1]}")


@pytest.fixture
def shared_dir():
    """A folder every user may write (under /tmp, whose sticky bit lets other users in), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pixelqa-qa-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


FILES_SCENARIOS = r"""
import json, os, subprocess, sys
from pathlib import Path
from pixelqa.files import FolderNotReplaceable, FolderTaken, atomic_folder, replace_blocker

def earlier(name):
    Path(name, "overlays").mkdir(parents=True)
    Path(name, "answer.txt").write_text("old")
    Path(name, "overlays", "00000.png").write_text("old")

def attempt(name):
    try:
        with atomic_folder(name) as tmp:
            (tmp / "answer.txt").write_text("new")
        return "replaced"
    except FolderNotReplaceable as exc:
        return "refused: " + str(exc)
    except FolderTaken as exc:
        return "taken: " + str(exc)

got = {}
earlier("protected"); subprocess.run(["chmod", "-R", "a-w", "protected"], check=True)
got["protected"] = attempt("protected")
earlier("leftover"); earlier(".leftover.old"); subprocess.run(["chmod", "-R", "a-w", ".leftover.old"], check=True)
got["leftover"] = attempt("leftover")
if len(sys.argv) > 1:  # another user's folder in a sticky one (only when the test runs as root)
    got["foreign_sticky"] = attempt(sys.argv[1])
got["names"] = sorted(os.listdir("."))
got["answers"] = {n: Path(n, "answer.txt").read_text() for n in ("protected", "leftover")}
print(json.dumps(got))
"""


def test_atomic_folder_refuses_what_it_could_not_replace_and_leaves_all_as_it_was(shared_dir):
    sticky = shared_dir / "sticky"
    (sticky / "theirs").mkdir(parents=True)
    (sticky / "theirs" / "answer.txt").write_text("theirs")
    (sticky / "theirs").chmod(0o777)  # writable by all: only the sticky bit keeps another user from renaming it
    sticky.chmod(0o1777)
    # as root, `theirs` is root's and the script runs as nobody; otherwise both are this user's: no foreign folder
    as_root = os.geteuid() == 0
    skip_unless_other_user_imports("pixelqa.files", shared_dir)
    done = as_other_user(FILES_SCENARIOS, shared_dir, *([str(sticky / "theirs")] if as_root else []))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["protected"].startswith("refused: 'protected' cannot be replaced: ")
    assert "'protected' is write-protected or another user's" in got["protected"]
    # a `.NAME.old` an earlier replacement could not remove is named, never blamed on another process
    assert got["leftover"].startswith("refused: 'leftover' cannot be replaced: '.leftover.old'")
    assert "remove it by hand" in got["leftover"]
    if as_root:
        foreign = got["foreign_sticky"]
        assert foreign.startswith(f"refused: {str(sticky / 'theirs')!r} cannot be replaced: it belongs to"), foreign
        assert "sticky" in foreign
    # nothing replaced, no temporary and no new `.old` left beside them
    assert got["answers"] == {"protected": "old", "leftover": "old"}
    assert got["names"] == [".leftover.old", "leftover", "protected", "sticky"]
    assert (sticky / "theirs" / "answer.txt").read_text() == "theirs" and os.listdir(sticky) == ["theirs"]


def test_a_removable_leftover_old_is_removed_by_the_next_replacement(tmp_path):
    from pixelqa.files import atomic_folder

    for name in ("out", ".out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "answer.txt").write_text(name)
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "answer.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (tmp_path / "out" / "answer.txt").read_text() == "new"


def test_cli_refuses_a_write_protected_earlier_output_before_the_model_loads(shared_dir, img):
    # where it cannot, the sticky folder test below runs the same CLI check in this process instead
    skip_unless_other_user_imports("torch, transformers, pixelqa.predict", shared_dir)
    shutil.copy(img, shared_dir / "img.png")
    make = "from pathlib import Path; import subprocess\n"
    make += "Path('out/overlays').mkdir(parents=True); Path('out/answer.txt').write_text('old')\n"
    make += "Path('out/overlays/00000.png').write_text('old'); subprocess.run(['chmod', '-R', 'a-w', 'out'])\n"
    assert as_other_user(make, shared_dir).returncode == 0
    # the --out check comes first: the tiny model's note (printed as the model is named) never appears
    cli_run = "import sys; from pixelqa.predict.__main__ import main; sys.exit(main(sys.argv[1:]))"
    args = ["--model", "tiny", "--media", "img.png", "--text", "hi", "--no-progress", "--out", "out"]
    done = as_other_user(cli_run, shared_dir, *args)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith("error: --out: 'out' cannot be replaced: 'out' is write-protected or another user's")
    assert "note: --model tiny" not in done.stderr  # refused before the model was even named
    assert sorted(os.listdir(shared_dir)) == ["img.png", "out"]
    assert (shared_dir / "out" / "answer.txt").read_text() == "old"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chowns a folder to another user")
def test_cli_refuses_another_users_earlier_output_in_a_sticky_folder(tmp_path, img, capsys, monkeypatch):
    sticky = tmp_path / "sticky"
    (sticky / "out").mkdir(parents=True)
    (sticky / "out" / "answer.txt").write_text("old")
    sticky.chmod(0o1777)
    os.chown(sticky / "out", 65534, 65534)
    # this process acts as a third user: neither the folder's owner (root) nor the output's (65534); every other
    # check stays real
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    argv = ["--model", "tiny", "--media", str(img), "--text", "hi", "--no-progress", "--out", str(sticky / "out")]
    rc, _, err = run_cli(argv, capsys)
    monkeypatch.undo()
    line = one_error_line(err)
    assert rc == 2 and line.startswith(f"error: --out: {str(sticky / 'out')!r} cannot be replaced: it belongs to")
    assert "sticky" in line and "note: --model tiny" not in err  # refused before the model was even named
    assert os.listdir(sticky) == ["out"] and (sticky / "out" / "answer.txt").read_text() == "old"
    # the same folder owned by the acting user is replaced: the refusal came from the ownership, not the setup
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    rc, _, err = run_cli(argv, capsys)
    monkeypatch.undo()
    assert rc == 0, err
    assert os.listdir(sticky) == ["out"] and (sticky / "out" / "answer.txt").read_text() != "old"


# ---- #1: frames past the processor's 200:1 aspect ratio, #11: empty paths -----------------------------------------


def _strip(folder: Path, w: int, h: int, kind: str) -> Path:
    """Media of w x h frames: an image, a 2-frame folder or a 3-frame mp4 (PyAV)."""
    if kind == "image":
        path = folder / f"strip_{w}x{h}.png"
        Image.new("RGB", (w, h), (200, 10, 10)).save(path)
    elif kind == "frames":
        path = folder / f"strip_{w}x{h}"
        path.mkdir()
        for t in range(2):
            Image.new("RGB", (w, h), (200, 10, 10)).save(path / f"{t:05d}.png")
    else:
        import av

        path = folder / f"strip_{w}x{h}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for _ in range(3):
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 128, np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


STRIPS = [("image", 500, 1), ("image", 1, 300), ("frames", 402, 2), ("video", 804, 4)]


@pytest.mark.parametrize(("kind", "w", "h"), STRIPS)
def test_media_past_200_to_1_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, kind, w, h):
    import pixelqa.predict.loading as loading

    media = _strip(tmp_path, w, h, kind)

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_model)
    argv = ["--model", "tiny", "--media", str(media), "--text", "hi", "--out", str(tmp_path / "o"), "--no-progress"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2
    assert one_error_line(err) == (
        f"error: --media: {str(media)!r} is {w}x{h}; expected an aspect ratio of at most 200:1 (the Qwen2.5-VL "
        "processor's limit): crop or pad it"
    )


def test_the_aspect_limit_is_the_processors_own(tmp_path):
    # the model's processor (transformers' smart_resize) takes 200:1 and refuses 201:1: the check agrees with it
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from pixelqa.predict.media import aspect_problem

    smart_resize(1, 200)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 201)
    assert aspect_problem(1, 200) is None and aspect_problem(200, 1) is None
    assert aspect_problem(1, 201) is not None and aspect_problem(201, 1) is not None


def test_api_refuses_a_narrow_strip_naming_media(tmp_path):
    from pixelqa.predict import Predictor, media_from_tensor
    from pixelqa.predict.errors import PredictInputError

    predictor = Predictor(cached_model(obj_scores=False), max_new_tokens=1)
    strip = _strip(tmp_path, 500, 1, "image")
    with pytest.raises(PredictInputError, match=r"^media: '.*strip_500x1.png' is 500x1; expected an aspect ratio"):
        predictor.run(strip, "hi")
    with pytest.raises(PredictInputError, match=r"^media: frames of a \(1, 3, 1, 300\) tensor: is 300x1; expected"):
        media_from_tensor(torch.zeros(1, 3, 1, 300, dtype=torch.uint8))
    with pytest.raises(PredictInputError, match=r"^media: got an empty path"):
        predictor.run("", "hi")


@pytest.mark.parametrize("option", ["--media", "--model", "--out"])
def test_empty_paths_are_refused_in_one_line(tmp_path, img, capsys, option):
    argv = {"--model": "tiny", "--media": str(img), "--out": str(tmp_path / "o")}
    argv[option] = ""
    rc, _, err = run_cli([*(x for kv in argv.items() for x in kv), "--text", "hi", "--no-progress"], capsys)
    assert rc == 2 and one_error_line(err).startswith(f"error: {option}: got an empty path, expected ")


# ---- #4: a first turn too long names --text -----------------------------------------------------------------------


def test_too_long_text_on_the_first_turn_names_text_with_its_share(tmp_path, img, capsys, monkeypatch):
    model = cached_model(obj_scores=False)
    tokens = len(model.tokenizer("word " * 3000, add_special_tokens=False).input_ids)
    monkeypatch.setattr("pixelqa.predict.loading.load_model", lambda *a, **k: (model, {"path": "tiny"}))
    argv = ["--model", "tiny", "--media", str(img), "--text", "word " * 3000, "--out", str(tmp_path / "o")]
    rc, _, err = run_cli([*argv, "--no-progress", "--max-new-tokens", "1"], capsys)
    line = one_error_line(err)
    assert rc == 2 and line.startswith("error: --text: too long for the model: the prompt is ")
    total = int(line.split("the prompt is ")[1].split()[0])
    limit = model.qwen.config.get_text_config().max_position_embeddings - 1  # positions minus max_new_tokens
    assert f"({tokens} of them the text, {total - tokens} the media's 1 LLM frame(s)" in line
    tail = "expected a shorter text (or fewer frames for the LLM: --llm-frames)"
    assert line.endswith(f"over the limit of {limit}; {tail}")
    assert total > limit and "history" not in line and not (tmp_path / "o").exists()
    # in --chat the first turn's --text is named by its option too; the session goes on to the (empty) input
    rc, _, err = run_cli([*argv, "--chat", "--no-progress", "--max-new-tokens", "1"], capsys, stdin=io.StringIO(""))
    assert rc == 0 and one_error_line(err) == line


# ---- #5: Ctrl-C in --chat; chat errors on stderr -------------------------------------------------------------------


class CtrlCAfter:
    """A stdin whose readline gives `lines`, then raises KeyboardInterrupt as Ctrl-C at the prompt does."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)

    def readline(self) -> str:
        if not self.lines:
            raise KeyboardInterrupt
        return self.lines.pop(0)


@pytest.fixture
def tiny_cli(monkeypatch):
    """The CLI's load_model giving the cached tiny model (no model build per test)."""
    model = cached_model(obj_scores=False)
    info = {"path": "tiny", "format": "tiny (random weights)", "device": "cpu", "dtype": "float32"}
    info.update(config=asdict(model.cfg), recipe={})
    monkeypatch.setattr("pixelqa.predict.loading.load_model", lambda *a, **k: (model, info))
    return model


def test_ctrl_c_at_the_chat_prompt_ends_the_session_like_end_of_input(tmp_path, img, capsys, tiny_cli):
    out = tmp_path / "chat"
    argv = ["--model", "tiny", "--media", str(img), "--chat", "--max-new-tokens", "1", "--out", str(out)]
    stdout = io.StringIO()
    rc = cli.main([*argv, "--no-progress"], stdin=CtrlCAfter(["What is [3]?\n", "Hi\n"]), stdout=stdout)
    err = capsys.readouterr().err
    said = stdout.getvalue()
    assert rc == 130 and said.rstrip().endswith(f"outputs: {out}") and "Traceback" not in err
    assert said.count("pixelqa> ") == 1 and sorted(p.name for p in out.iterdir()) == ["turn1"]
    # a turn's error goes to stderr, not into the transcript
    assert "error: text: names object [3], which is not in memory (memory holds nothing yet)" in err
    assert "error:" not in said


def test_ctrl_c_during_a_chat_turn_drops_that_turn_in_one_line(tmp_path, img, capsys, tiny_cli, monkeypatch):
    from pixelqa.predict.predictor import Predictor

    real_run, calls = Predictor.run, []

    def interrupted_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(Predictor, "run", interrupted_second)
    out = tmp_path / "chat"
    argv = ["--model", "tiny", "--media", str(img), "--chat", "--max-new-tokens", "1", "--out", str(out)]
    stdout = io.StringIO()
    rc = cli.main([*argv, "--no-progress"], stdin=io.StringIO("one\ntwo\nthree\n"), stdout=stdout)
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("stopped:")] == [
        "stopped: turn 2 dropped (Ctrl-C); the conversation is as before it"
    ]
    # the third message became turn 2: the dropped one left no folder and no turn number behind
    assert sorted(p.name for p in out.iterdir()) == ["turn1", "turn2"]
    assert json.loads((out / "turn2" / "run.json").read_text())["text_given"] == "three"


def test_ctrl_c_in_a_one_turn_run_is_one_line_and_130(tmp_path, img, capsys, tiny_cli, monkeypatch):
    from pixelqa.predict.predictor import Predictor

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "run", stop)
    argv = ["--model", "tiny", "--media", str(img), "--text", "hi", "--out", str(tmp_path / "o"), "--no-progress"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 130 and one_error_line(err).startswith("error: predict stopped (Ctrl-C)")
    assert not (tmp_path / "o").exists()


# ---- #6: --mask naming a folder or a missing file -------------------------------------------------------------------


def test_mask_folder_and_missing_file_messages(tmp_path):
    from pixelqa.predict.errors import PredictInputError
    from pixelqa.predict.prompts import read_mask_png

    (tmp_path / "d").mkdir()
    with pytest.raises(PredictInputError) as caught:
        read_mask_png(str(tmp_path / "d"), str(tmp_path / "d"))
    assert str(caught.value) == f"--mask: {str(tmp_path / 'd')!r} is a folder; expected a mask image (PNG)"
    with pytest.raises(PredictInputError) as caught:
        read_mask_png("gone.png", "gone.png")
    assert str(caught.value) == "--mask: 'gone.png' does not exist; expected a mask image (PNG)"
    with pytest.raises(PredictInputError) as caught:
        read_mask_png("gone.png", "gone.png,3")
    assert str(caught.value) == "--mask: 'gone.png' (in 'gone.png,3') does not exist; expected a mask image (PNG)"


# ---- #7: --max-frames below the prompt frames warns -----------------------------------------------------------------


def test_max_frames_below_the_prompt_frames_warns_and_reads_them_all(tmp_path, capsys, tiny_cli):
    from test_predict_units import write_video

    write_video(tmp_path / "clip.mp4", 20)
    out = tmp_path / "o"
    argv = ["--model", "tiny", "--media", str(tmp_path / "clip.mp4"), "--text", "hi", "--point", "5,5,19"]
    argv += ["--box", "1,1,30,30,7", "--max-frames", "1", "--max-new-tokens", "1", "--out", str(out), "--no-progress"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --max-frames: reading 2 frames, not 1: every prompt frame is read (7, 19)"
    ]
    assert json.loads((out / "run.json").read_text())["frames"]["read"] == [7, 19]
    assert "every prompt frame is read too" in " ".join(cli.build_parser().format_help().split())


# ---- #8: run.json keeps the text as given; #13: --max-new-tokens 0, released sizes, checkpoint file ----------------


def test_run_json_text_given_and_max_new_tokens_zero(tmp_path, img, capsys, tiny_cli):
    out = tmp_path / "o"
    argv = ["--model", "tiny", "--media", str(img), "--text", "  hi  there ", "--point", "5,5"]
    rc, printed, err = run_cli([*argv, "--max-new-tokens", "0", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["text_given"] == "  hi  there " and run["text"] == "[0] <|ref|> hi  there"
    assert run["answer"] == "" and (out / "answer.txt").read_text() == "\n" and printed.startswith("\n")
    assert run["objects"]["0"]["this_turn"]  # segmented without an answer
    rc, _, err = run_cli([*argv, "--max-new-tokens", "-1", "--out", str(out)], capsys)
    assert rc == 2 and one_error_line(err) == "error: --max-new-tokens: got -1, expected an integer >= 0"


RELEASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"


@pytest.mark.skipif(not RELEASE.is_dir(), reason="the released-format fixture is not here")
def test_released_folder_records_its_own_sizes_not_a_preset(tmp_path, img):
    from pixelqa.predict import Predictor, load_model
    from pixelqa.predict.outputs import write_outputs

    model, info = load_model(RELEASE, "cpu")
    pred = Predictor(model, max_new_tokens=1, model_info=info).run(str(img), "hi")
    run = write_outputs(pred, tmp_path / "o")
    truth = json.loads((RELEASE / "config.json").read_text())  # the folder's own sizes, read independently
    assert run["model"]["config"]["preset"] is None and run["model"]["config"]["tiny"] is None
    assert run["model"]["sizes"]["hidden_size"] == truth["hidden_size"]
    assert run["model"]["sizes"]["num_hidden_layers"] == truth["num_hidden_layers"]


# ---- #9: the GIF lasts as long as the source ------------------------------------------------------------------------


def gif_delays_cs(path: Path) -> list[int]:
    """Every frame's delay of a GIF as stored (centiseconds), read back by Pillow."""
    with Image.open(path) as im:
        delays = []
        for t in range(im.n_frames):
            im.seek(t)
            delays.append(im.info["duration"] // 10)
    return delays


@pytest.mark.parametrize(("n", "fps"), [(150, 30.0), (20, 10.0), (10, 7.0), (9, 60.0), (4, 4.0)])
def test_gif_lasts_as_long_as_the_source(tmp_path, n, fps):
    from pixelqa import viz

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)  # all different: Pillow merges none
    viz.save_gif(frames, tmp_path / "a.gif", fps=fps)
    delays = gif_delays_cs(tmp_path / "a.gif")
    assert sum(delays) == round(100 * n / fps)  # n / fps seconds, to the centisecond
    assert min(delays) >= 4 or len(delays) == 1  # never faster than 25 fps
    assert len(delays) == min(n, round(100 * n / fps) // 4 or 1)
    assert max(delays) - min(delays) <= 1  # evenly spaced


# ---- #10: API prompts: empty masks and non-numeric coordinates ------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("empty_mask", r"^prompts\[0\]\.mask: got an empty mask \(no pixel set\), expected at least one pixel$"),
        ("text_x", r"^prompts\[0\]\.x: got 'a' \(str\), expected a number in \[0, 1\]$"),
        ("none_y2", r"^prompts\[0\]\.y2: got None \(NoneType\), expected a number in \[0, 1\]$"),
    ],
)
def test_api_prompt_errors_name_the_field(img, prompt, message):
    from pixelqa.model.chat import Box, Mask, Point
    from pixelqa.predict import Predictor
    from pixelqa.predict.errors import PredictInputError

    given = {
        "empty_mask": Mask(torch.zeros(48, 64, dtype=torch.bool)),
        "text_x": Point("a", 0.5),
        "none_y2": Box(0.1, 0.1, 0.5, None),
    }[prompt]
    with pytest.raises(PredictInputError, match=message):
        Predictor(cached_model(obj_scores=False), max_new_tokens=1).run(str(img), "hi", [given])


def test_api_coordinates_of_any_real_type_are_taken_as_floats(img):
    from pixelqa.model.chat import Point
    from pixelqa.predict import Predictor

    pred = Predictor(cached_model(obj_scores=False), max_new_tokens=1).run(str(img), "hi", [Point(np.float32(0.5), 1)])
    assert pred.prompts[0].x == 0.5 and type(pred.prompts[0].x) is float and pred.prompts[0].y == 1.0


# ---- #12: the video probe shows its progress, and still counts by decoding -----------------------------------------


def test_video_probe_has_a_bar_over_the_declared_count_and_counts_a_cut_file_right(tmp_path, capsys, monkeypatch):
    from test_predict_units import write_video

    from pixelqa.predict.media import probe_media

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("pixelqa.predict.media.PROBE_BAR_DELAY_S", 0.0)  # a long video's wait, on a short one
    write_video(tmp_path / "whole.mp4", 30, faststart=True)  # PyAV's mp4: its header declares 30 frames
    info = probe_media(tmp_path / "whole.mp4", progress=True)
    assert (info.num_frames, info.declared_frames) == (30, 30)
    err = capsys.readouterr().err
    assert "probing video:" in err and "/30 " in err  # a total: the container's count
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])  # its header still says 30
    cut = probe_media(tmp_path / "cut.mp4", progress=True)
    assert cut.declared_frames == 30 and 0 < cut.num_frames < 30  # the count is the frames that decode
    assert "probing video" in capsys.readouterr().err
    assert probe_media(tmp_path / "whole.mp4").num_frames == 30 and capsys.readouterr().err == ""  # off by default
