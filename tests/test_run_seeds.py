"""`seed` is one replicate: the model's random initialisation (`model.seed`) follows the run's `seed` unless
`model.seed=N` is given, which pins the initialisation while `seed` varies the data order. The checkpoint keeps the
resolved value (a plain int) and evaluate rebuilds the model from it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pixelqa.config import flatten, load_recipe, to_object

torch.set_num_threads(1)

PRESETS = (["model=tiny"], ["model=unipixel-3b", "model.path=/x"], ["model=unipixel-7b", "model.path=/x"])


@pytest.mark.parametrize("recipe", ["stage1", "stage2", "stage3"])
@pytest.mark.parametrize("preset", PRESETS, ids=["tiny", "3b", "7b"])
def test_model_seed_follows_the_run_seed_in_every_recipe_and_preset(recipe, preset):
    for scale in ([], ["scale=paper"]):
        args = [f"recipe={recipe}", *preset, *scale]
        assert load_recipe(args).model.seed == 0  # the default run (the demo's figures): the same init as before
        cfg = load_recipe([*args, "seed=3"])
        assert cfg.model.seed == 3 and to_object(cfg).model.seed == 3 and flatten(cfg)["model.seed"] == 3
        assert "seed: 3" in OmegaConf.to_yaml(cfg.model, resolve=True)  # recipe.yaml: the value, no interpolation


def test_model_seed_typed_pins_the_initialisation_in_either_order():
    assert load_recipe(["recipe=stage3", "seed=2", "model.seed=0"]).model.seed == 0
    assert load_recipe(["recipe=stage3", "model.seed=5", "seed=2"]).model.seed == 5
    cfg = load_recipe(["recipe=stage3", "model.seed=5"])
    assert cfg.seed == 0 and cfg.model.seed == 5


def test_a_grid_seed_axis_varies_the_initialisation_too():
    from pixelqa.grid import resolved_recipe

    assert resolved_recipe(["recipe=stage3", "seed=1"])["model.seed"] == 1
    assert resolved_recipe(["recipe=stage3"])["model.seed"] == 0


def _initial_weights(args: list[str]) -> dict[str, torch.Tensor]:
    """The trained tensors of a stage-3 module as pixelqa.fit builds it (model config resolved, as `_plain` does)."""
    from pixelqa.train.module import module_class

    cfg = load_recipe(["recipe=stage3", *args])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    module = module_class(3)(model=model, optim=optim, total_steps=10, seed=int(cfg.seed), accumulate=1)
    return {k: v.detach().clone() for k, v in module.model.trainable_state_dict().items()}


def test_seed_changes_the_initial_weights_and_model_seed_pins_them():
    base, other = _initial_weights([]), _initial_weights(["seed=1"])
    pinned = _initial_weights(["seed=1", "model.seed=0"])
    assert base.keys() == other.keys() == pinned.keys()
    differ = sum(not torch.equal(base[k], other[k]) for k in base)
    assert differ > len(base) // 2, f"seed=1 changed only {differ} of {len(base)} initial tensors"
    assert all(torch.equal(base[k], pinned[k]) for k in base)  # model.seed=0: the seed-0 initialisation


def test_checkpoints_store_the_resolved_seed_and_evaluate_rebuilds_it(tmp_path):
    from pixelqa.eval.model_loading import adopt_trained_model
    from pixelqa.fit import _plain

    trained = _plain(load_recipe(["recipe=stage3", "seed=3"]).model)  # what fit saves as hyper_parameters.model
    assert type(trained["seed"]) is int and trained["seed"] == 3
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": trained, "stage": 3}}, ckpt)
    cfg = load_recipe(["recipe=stage3"])  # evaluate's recipe: seed 0
    lines = adopt_trained_model(cfg, [], ckpt)
    assert lines == ["model settings from the checkpoint: model.seed 0 -> 3"]
    assert cfg.model.seed == 3 and to_object(cfg).model.seed == 3
    same = load_recipe(["recipe=stage3", "seed=3"])  # evaluated with the run's own seed: nothing to adopt
    assert adopt_trained_model(same, [], ckpt) == [] and same.model.seed == 3
