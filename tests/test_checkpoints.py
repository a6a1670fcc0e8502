"""Checkpoints load without running code from them (pixelqa.checkpoints): a Lightning checkpoint of pixelqa.fit
loads as it is, a crafted one that would run a command while unpickling is refused by init_from, evaluate and the
predict loader (naming what it needs), and runs only when the user trusts it (trust_checkpoint=true)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pixelqa import evaluate, fit
from pixelqa.checkpoints import CheckpointError, safe_torch_load
from pixelqa.config import RecipeError, load_recipe, run_cli, to_object
from pixelqa.train.module import read_checkpoint


class _RunsCode:
    """Pickles as a call to os.system: plain torch.load would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil(tmp_path) -> tuple[Path, Path]:
    """(a stage-2 'checkpoint' carrying a command, the file the command would create)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "pixelqa_stage": 2, "payload": _RunsCode(marker)}, path)
    return path, marker


def test_plain_checkpoint_loads_and_crafted_one_is_refused_naming_the_call(tmp_path, evil):
    path, marker = evil
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"out": Path("/x")}, "pixelqa_stage": 2}, plain)
    got = read_checkpoint(plain)
    assert torch.equal(got["state_dict"]["w"], torch.ones(2)) and got["hyper_parameters"]["out"] == Path("/x")
    with pytest.raises(CheckpointError, match=r"init_from: .*evil.ckpt.* needs unpickling of (posix|os)\.system"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
        safe_torch_load(tmp_path / "junk.ckpt")


def test_init_from_refuses_a_crafted_checkpoint_unless_trusted(evil):
    path, marker = evil
    recipe = to_object(load_recipe(["recipe=stage3", f"init_from={path}"]))
    with pytest.raises(RecipeError, match="could run code; refused. Set trust_checkpoint=true"):
        fit.check_init_from(recipe)
    assert not marker.exists()
    trusted = to_object(load_recipe(["recipe=stage3", f"init_from={path}", "trust_checkpoint=true"]))
    assert fit.check_init_from(trusted)["pixelqa_stage"] == 2
    assert marker.exists()  # what trusting means: the file's code ran


def test_evaluate_refuses_a_crafted_checkpoint_with_one_line_and_status_2(evil, capsys):
    path, marker = evil
    recipe = to_object(load_recipe(["recipe=stage3", f"ckpt={path}"]))
    with pytest.raises(RecipeError, match=r"ckpt: .*evil.ckpt.* needs unpickling"):
        evaluate.load_model(recipe, path)
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda args: evaluate.load_model(to_object(load_recipe(args)), path), None, ["recipe=stage3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err
    assert not marker.exists()
    # the flag spelling reaches the recipe key
    assert to_object(load_recipe(["trust_checkpoint=true"])).trust_checkpoint is True


@pytest.mark.slow
def test_a_fit_checkpoint_loads_safely_as_it_was_saved(tmp_path):
    run = tmp_path / "run"
    fit.run(
        [
            "recipe=stage3",
            f"data.shards={tmp_path / 'shards'}",
            "data.synthetic_train=4",
            "data.synthetic_val=2",
            "data.val_samples=2",
            "data.batch_size=2",
            "data.val_batch_size=2",
            "trainer.max_steps=1",
            "trainer.enable_progress_bar=false",
            "eval.after_fit=false",
            "tracking=none",
            f"output_dir={run}",
        ]
    )
    safe = read_checkpoint(run)
    full = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert sorted(safe) == sorted(full) and safe["hyper_parameters"] == full["hyper_parameters"]
    assert all(torch.equal(safe["state_dict"][k], v) for k, v in full["state_dict"].items())
    model = evaluate.load_model(to_object(load_recipe(["recipe=stage3"])), run / "checkpoints" / "last.ckpt")
    name, weight = next(iter(full["state_dict"].items()))
    assert torch.equal(dict(model.named_parameters())[name.removeprefix("model.")], weight)


@pytest.mark.parametrize("content", [b"hello", b"{}", b"\x80\x04\x95garbage"])
def test_a_file_that_is_no_checkpoint_is_one_clear_error(tmp_path, content, recwarn):
    path = tmp_path / "notackpt.ckpt"
    path.write_bytes(content)  # text (torch's unpickler: KeyError 101), JSON, a truncated pickle
    with pytest.raises(CheckpointError, match=r"--model: .*notackpt.ckpt' cannot be read as a checkpoint"):
        safe_torch_load(path, what="--model")
    assert not [w for w in recwarn.list if "pickle protocol" in str(w.message)]
