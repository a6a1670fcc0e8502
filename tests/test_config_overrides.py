"""Command-line values are taken whole (a ` #` is no YAML comment) and a leading `~` in path keys is expanded when a
recipe is loaded (pixelqa.config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelqa.config import Recipe, RecipeError, load_recipe, to_object

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# ------------------------------------------------------------------------------------- ' #' in values


@pytest.mark.parametrize(
    "key",
    ["output_dir", "data.shards", "tracking.run_name", "tracking.artifact_location", "model.mask_decoder.checkpoint"],
)
def test_a_hash_after_a_space_is_part_of_the_value(tmp_path, key):
    value = f"{tmp_path}/sp ace ü 日本 #1%20"
    cfg = load_recipe(["recipe=stage3", f"{key}={value}"])
    assert OmegaConf.select(cfg, key) == value  # was cut to '<tmp>/sp ace ü 日本' (YAML comment)


def test_the_folder_a_run_writes_to_keeps_its_hash(tmp_path):
    recipe = to_object(load_recipe(["recipe=stage3", f"output_dir={tmp_path}/run #1", f"data.shards={tmp_path}/s #2"]))
    assert recipe.output_dir == f"{tmp_path}/run #1" and recipe.data.shards == f"{tmp_path}/s #2"
    uri = f"sqlite:///{tmp_path}/ml runs #3.db"
    assert load_recipe(["recipe=stage3", f"tracking.tracking_uri={uri}"]).tracking.tracking_uri == uri


def test_values_are_still_typed_as_yaml():
    cfg = load_recipe(
        [
            "recipe=stage3",
            "trainer.max_steps=7",
            "trainer.deterministic=true",
            "optim.lr=0.5",
            "optim.betas=[0.8, 0.95]",
            "data.val_samples=null",
            'tracking.run_name="quoted #hash"',
            "tracking.experiment=a#b",
            "optim.extra_trainable=[lm_head, odd #name]",
        ]
    )
    assert cfg.trainer.max_steps == 7 and cfg.trainer.deterministic is True and cfg.optim.lr == 0.5
    assert list(cfg.optim.betas) == [0.8, 0.95] and cfg.data.val_samples is None
    assert cfg.tracking.run_name == "quoted #hash" and cfg.tracking.experiment == "a#b"
    assert list(cfg.optim.extra_trainable) == ["lm_head", "odd #name"]


def test_a_number_followed_by_a_comment_is_refused_not_cut():
    with pytest.raises(RecipeError, match="trainer.max_steps"):
        load_recipe(["recipe=stage3", "trainer.max_steps=5 #steps"])  # was 5: the ' #steps' silently dropped


# ------------------------------------------------------------------------------------- '~' in path keys


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of this test ($HOME, which os.path.expanduser reads)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


def test_path_keys_exist_in_the_schema():
    from pixelqa.config import PATH_KEYS

    schema = OmegaConf.structured(Recipe)
    for key in PATH_KEYS:
        assert OmegaConf.select(schema, key, default="__missing__") != "__missing__", key


@pytest.mark.parametrize(
    "key",
    ["output_dir", "init_from", "data.shards", "data.raw_root", "model.path", "model.mask_decoder.checkpoint"],
)
def test_a_leading_tilde_is_expanded_in_path_keys(home, key):
    cfg = load_recipe(["recipe=stage3", f"{key}=~/pixelqa/x #1"])
    assert OmegaConf.select(cfg, key) == f"{home}/pixelqa/x #1"


def test_tilde_in_output_dir_gives_one_absolute_run_folder(home):
    recipe = to_object(load_recipe(["recipe=stage3", "output_dir=~/qa_run"]))
    # Lightning's ModelCheckpoint expands `~` in its dirpath; every other writer uses the folder as given: one folder
    assert recipe.output_dir == str(home / "qa_run") and Path(recipe.output_dir).is_absolute()
    assert (Path(recipe.output_dir) / "checkpoints").as_posix() == os.path.expanduser("~/qa_run/checkpoints")


def test_tilde_in_tracking_uris_and_other_spots(home):
    cfg = load_recipe(
        [
            "recipe=stage3",
            "tracking.tracking_uri=sqlite:///~/ml/mlruns.db",
            "tracking.artifact_location=~/ml/artifacts",
            "launcher.folder=~/jobs",
            "ckpt=~/runs/x/checkpoints/last.ckpt",
            "tracking.run_name=~not-a-path",  # not a path key: left alone
        ]
    )
    assert cfg.tracking.tracking_uri == f"sqlite:///{home}/ml/mlruns.db"
    assert cfg.tracking.artifact_location == f"{home}/ml/artifacts"
    assert cfg.launcher.folder == f"{home}/jobs" and cfg.ckpt == f"{home}/runs/x/checkpoints/last.ckpt"
    assert cfg.tracking.run_name == "~not-a-path"
    inner = load_recipe(["recipe=stage3", "output_dir=runs/~x", "data.shards=shards"])
    assert inner.output_dir == "runs/~x" and inner.data.shards == "shards"  # only a leading ~ is the home folder


def test_tilde_in_a_recipe_file_is_expanded_too(home, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((RECIPES / "stage3.yaml").read_text() + "output_dir: ~/from_the_file\n")
    cfg = load_recipe([f"recipe={recipe}"])
    assert cfg.output_dir == f"{home}/from_the_file"
    assert load_recipe(["recipe=stage3"]).output_dir == "runs/stage3"  # the default, relative, is unchanged
