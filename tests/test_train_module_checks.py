"""Recipe errors (one line, exit 2) where building or resuming the training module meets a setting that cannot work:
`optim.extra_trainable` patterns that match no parameter, and a `ckpt=` resume whose stored weights have other shapes
than the model the recipe builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_fixtures import checkpointing_fit_args
from omegaconf import OmegaConf

from pixelqa import fit
from pixelqa.config import RecipeError, load_recipe
from pixelqa.train.module import Stage3Module


def _args(work: Path, name: str, *extra: str) -> list[str]:
    return checkpointing_fit_args(work, name, *extra, train_samples=8)


def test_extra_trainable_matching_no_parameter_is_a_recipe_error_naming_it_and_real_names():
    cfg = load_recipe(["recipe=stage3", "optim.extra_trainable=[lm_head,no_such_module]"])
    model, optim = (OmegaConf.to_container(c, resolve=True) for c in (cfg.model, cfg.optim))
    with pytest.raises(RecipeError) as caught:
        Stage3Module(model, optim, total_steps=2)
    said = str(caught.value)
    assert said.startswith("optim.extra_trainable: ['no_such_module'] match no parameter name of the model")
    assert "\n" not in said
    shown = said.split("e.g. ")[1].rstrip(")").split(", ")
    names = {n for n, _ in Stage3Module(model, {**optim, "extra_trainable": []}, total_steps=2).named_parameters()}
    assert len(shown) == 4 and all(f"model.{n}" in names for n in shown)  # real names, as patterns see them


def test_the_cli_refuses_an_unmatched_extra_trainable_with_one_line_and_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pixelqa.fit", *_args(tmp_path, "x", "optim.extra_trainable=[no_such_module]")],
        cwd=tmp_path,
        env=dict(os.environ, TQDM_DISABLE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "optim.extra_trainable: ['no_such_module'] match no parameter name" in done.stderr.strip().splitlines()[-1]


def test_a_resume_with_other_weight_shapes_names_them_and_says_what_to_do(tmp_path):
    fit.run(_args(tmp_path, "run", "trainer.max_steps=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stored = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    # independent truth: the stored shapes against a model built with the changed setting
    cfg = load_recipe(["recipe=stage3", "model.hidden_tokens=4"])
    changed = Stage3Module(*(OmegaConf.to_container(c, resolve=True) for c in (cfg.model, cfg.optim)), total_steps=2)
    ours = changed.state_dict()
    differ = [k for k in stored if k in ours and stored[k].shape != ours[k].shape]
    assert differ
    first = differ[0]
    with pytest.raises(RecipeError) as caught:
        fit.run(_args(tmp_path, "run", "trainer.max_steps=2", "model.hidden_tokens=4", "ckpt=last"))
    said = str(caught.value)
    assert re.match(rf"ckpt=.*last\.ckpt: {len(differ)} stored weights have other shapes than this model's ", said)
    expected = f"{first}: {tuple(stored[first].shape)} in the checkpoint, {tuple(ours[first].shape)} here"
    assert expected in said
    assert "a resume needs the model settings of the run it continues" in said and "\n" not in said


def test_a_deepspeed_client_state_without_weights_is_taken_not_a_key_error():
    # Lightning's DeepSpeed resume hands on_load_checkpoint the engine's client state: every entry of the checkpoint
    # but "state_dict" (and the optimizer states); the engine loads the weights from its own files
    cfg = load_recipe(["recipe=stage3"])
    model, optim = (OmegaConf.to_container(c, resolve=True) for c in (cfg.model, cfg.optim))
    module = Stage3Module(model, optim, total_steps=2)
    counts = {key: 3.0 for key in module.data_counts}
    module.on_load_checkpoint({"pixelqa_data_counts": counts, "global_step": 5})
    assert module.data_counts == counts
