"""`python -m pixelqa.export CKPT OUT --overwrite` replaces only an earlier export (or an empty folder): a folder
holding anything else is refused in one line with exit 2 before the model loads, naming OUT and a few of the
foreign entries; the home folder, the current folder, a folder holding it and a folder holding the model being
exported are refused even with --overwrite, and `atomic_folder` itself never replaces the home or current folder.

Every folder here lives under pytest's tmp_path: HOME points at a folder there and the tests run from one."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pixelqa import export

EARLIER = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _fill(folder: Path, names: tuple[str, ...] = EARLIER, text: str = "old") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(text)
    return folder


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "/" for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A home folder and a current folder under tmp_path, and an exporter whose model loads in no time (the calls
    to load it are counted: a refusal comes before any)."""
    home = tmp_path / "home"
    cwd = tmp_path / "work" / "project" / "cwd"
    home.mkdir()
    cwd.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    saver = SimpleNamespace(save_pretrained=lambda folder: Path(folder, "tokenizer.json").write_text("new"))
    processor = SimpleNamespace(tokenizer=saver, image_processor=saver, video_processor=saver, chat_template=None)
    model = SimpleNamespace(processor=processor, tokenizer=SimpleNamespace(chat_template=None))
    loads: list[str] = []
    monkeypatch.setattr(export, "load_any", lambda path, trust=False: loads.append(str(path)) or model)
    monkeypatch.setattr(export, "release_state_dict", lambda m, dtype: ({"w": torch.zeros(1)}, False))
    monkeypatch.setattr(export, "release_config", lambda m, tied, dtype: {"model_type": "new"})
    return SimpleNamespace(tmp=tmp_path, home=home, cwd=cwd, loads=loads, ckpt=str(tmp_path / "run.ckpt"))


def _refused(world, capsys, out: str | Path, *, ckpt: str | None = None) -> str:
    """Run `export CKPT OUT --overwrite`; assert exit 2, one line on stderr, no model loaded; return the line."""
    assert export.main([ckpt or world.ckpt, str(out), "--overwrite"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("error: out: "), err
    assert "exported" not in captured.out
    assert world.loads == []
    return err


def test_the_home_folder_is_refused_even_with_overwrite(world, capsys):
    _fill(world.home, ("config.json", "model.safetensors"))  # even when it looks like an export
    before = _contents(world.home)
    for out in (world.home, str(world.home) + "/", os.path.relpath(world.home)):  # any spelling
        err = _refused(world, capsys, out)
        assert "is the home folder" in err and str(Path(out)) in err
    assert _contents(world.home) == before


@pytest.mark.parametrize(
    "spelling,said",
    [
        (".", "is the current folder"),
        ("CWD", "is the current folder"),
        ("..", "is a folder holding the current folder"),
        ("../..", "is a folder holding the current folder"),
        ("CWD/..", "is a folder holding the current folder"),
        ("PARENT", "is a folder holding the current folder"),  # as /root held the current folder of report F3
    ],
)
def test_the_current_folder_and_its_ancestors_are_refused_even_with_overwrite(world, capsys, spelling, said):
    _fill(world.cwd, ("config.json",))  # as an earlier export would
    (world.cwd.parent / "notes.txt").write_text("mine")
    before = _contents(world.tmp)
    out = spelling.replace("CWD", str(world.cwd)).replace("PARENT", str(world.cwd.parent))
    err = _refused(world, capsys, out)
    assert said in err and repr(str(Path(out))) in err
    assert _contents(world.tmp) == before


def test_a_folder_holding_the_model_being_exported_is_refused(world, capsys):
    saved = _fill(world.tmp / "saved", ("unipixel_config.json", "unipixel.pt"))  # a save_pretrained folder
    released = _fill(world.tmp / "models" / "rel", ("config.json", "model.safetensors"))
    linked = _fill(world.tmp / "linked", ("config.json",))  # a copy whose weights are a link into `weights`
    weights = _fill(world.tmp / "weights", ("model.safetensors",))
    (linked / "model.safetensors").symlink_to(weights / "model.safetensors")
    _fill(world.tmp / "run" / "checkpoints", ("last.ckpt",))
    before = _contents(world.tmp)
    for ckpt, out in (
        (saved, saved),  # OUT is the model's own folder: export onto itself
        (released, released.parent),  # OUT holds it
        (linked, weights),  # OUT holds a file the model is read from
        (world.tmp / "run" / "checkpoints" / "last.ckpt", world.tmp / "run"),  # a run folder holding the checkpoint
    ):
        err = _refused(world, capsys, out, ckpt=str(ckpt))
        assert "holds the model being exported" in err and str(out) in err
    assert _contents(world.tmp) == before


def test_a_folder_with_foreign_entries_is_refused_naming_a_few(world, capsys):
    out = _fill(world.tmp / "mine", ("config.json", "model.safetensors", "thesis.txt"))
    (out / "data").mkdir()
    before = _contents(out)
    err = _refused(world, capsys, out)
    assert str(out) in err and "'data', 'thesis.txt'" in err and "config.json" not in err
    for i in range(4):
        (out / f"photo{i}.jpg").write_text("jpeg")
    before = _contents(out)
    err = _refused(world, capsys, out)
    assert "'data', 'photo0.jpg', 'photo1.jpg' and 3 more" in err
    assert _contents(out) == before
    assert export.main([world.ckpt, str(out)]) == 2  # without --overwrite: the same line
    assert "holds what no export writes" in capsys.readouterr().err and _contents(out) == before


def test_an_earlier_export_is_replaced_with_overwrite_only(world, capsys):
    out = _fill(world.tmp / "exported", (*EARLIER, "model-00001-of-00002.safetensors", "unipixel.pt"))
    assert export.main([world.ckpt, str(out)]) == 2  # without --overwrite: kept, the flag named
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "an earlier export" in err and "--overwrite" in err and world.loads == []
    assert export.main([world.ckpt, str(out), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == f"exported: {out}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (out / "config.json").read_text() == '{\n  "model_type": "new"\n}'
    assert sorted(p.name for p in world.tmp.iterdir()) == ["exported", "home", "work"]  # nothing left beside it
    empty = world.tmp / "empty"
    empty.mkdir()
    assert export.main([world.ckpt, str(empty)]) == 0  # an empty folder needs no flag
    assert (empty / "model.safetensors").is_file()


def test_atomic_folder_never_replaces_the_home_or_the_current_folder(world):
    from pixelqa.files import atomic_folder, protected_folder

    _fill(world.home, ("config.json",))
    _fill(world.cwd, ("config.json",))
    before = _contents(world.tmp)
    for folder, said in (
        (world.home, "is the home folder"),
        (Path("."), "is the current folder"),
        (world.cwd, "is the current folder"),
        (Path(".."), "holding the current folder"),
        (world.tmp / "work", "holding the current folder"),
    ):
        for replace in (True, False):
            with pytest.raises(ValueError, match=said), atomic_folder(folder, replace=replace) as tmp:
                (tmp / "config.json").write_text("new")
    assert _contents(world.tmp) == before
    # the root folder is refused by the same rule (not written to here: the rule alone is checked)
    assert protected_folder("/") == "the root folder"
    assert protected_folder(world.tmp / "elsewhere") is None
    with atomic_folder(world.tmp / "elsewhere") as tmp:  # any other folder is written as before
        (tmp / "a").write_text("a")
    assert (world.tmp / "elsewhere" / "a").read_text() == "a"


def test_the_overwrite_help_says_what_is_replaced(capsys):
    with pytest.raises(SystemExit):
        export.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "earlier export" in text and "always refused" in text
