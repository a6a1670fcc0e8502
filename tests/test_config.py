"""Recipe composition, overrides, schema errors and printing (pixelqa.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelqa.config import (
    RecipeError,
    available_presets,
    available_recipes,
    flatten,
    load_recipe,
    print_config,
    to_object,
)
from pixelqa.model.config import UniPixelConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_stage_recipes_exist_and_default_to_the_demo():
    assert {"stage1", "stage2", "stage3"} <= set(available_recipes())
    for stage in (1, 2, 3):
        cfg = load_recipe([f"recipe=stage{stage}"])
        assert cfg.stage == stage
        assert cfg.model.preset == "tiny" and cfg.data.name == "synthetic"
        assert cfg.presets["scale"] == "demo"


def test_presets_after_self_override_the_body_and_paper_scale_keeps_it():
    demo = load_recipe(["recipe=stage3"])
    body = OmegaConf.load(RECIPES / "stage3.yaml")
    scale = OmegaConf.load(RECIPES / "scale" / "demo.yaml")
    # The demo scale wins over the paper values written in the recipe body ...
    assert demo.optim.lr == scale.optim.lr != body.optim.lr
    assert demo.model.lora.rank == scale.model.lora.rank
    # ... and the paper scale keeps them: stage 3's lrs, LoRA r128/a256, batch 32 (Table 12 / §3.4).
    paper = load_recipe(["recipe=stage3", "scale=paper", "model=unipixel-3b", "model.path=/w", "data=sft1m"])
    assert (paper.optim.lr, paper.optim.decoder_lr) == (2e-5, 5e-6)
    assert (paper.model.lora.rank, paper.model.lora.alpha, paper.model.lora.enabled) == (128, 256, True)
    assert paper.data.global_batch_size == 32 and paper.data.num_frames == 8
    assert paper.model.mask_decoder.image_size == 768 and paper.model.mask_decoder.arch == "hiera_b+"
    assert paper.model.path == "/w"


def test_sft1m_mixture_matches_table_12():
    cfg = load_recipe(["recipe=stage3", "data=sft1m"])
    repeats = {s.name: s.repeat for s in cfg.data.sources}
    assert len(repeats) == 28
    assert repeats["refcoco"] == 10 and repeats["instit_qa_memory"] == 3 and repeats["llava_mix665k"] == 1
    stage2 = load_recipe(["recipe=stage2", "data=stage2-mix"])
    assert {s.name: s.repeat for s in stage2.data.sources} == {
        "refcoco": 5,
        "refcoco_plus": 5,
        "refcocog": 5,
        "refclef": 5,
        "ref_youtube_vos": 3,
    }


def test_dotlist_overrides_are_typed_and_reach_lists():
    cfg = load_recipe(["recipe=stage3", "trainer.max_steps=7", "model.hidden_tokens=4", "data.sources.0.repeat=2.5"])
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.model.hidden_tokens == 4
    assert cfg.data.sources[0].repeat == 2.5
    obj = to_object(cfg)
    assert isinstance(obj.model, UniPixelConfig) and obj.model.hidden_tokens == 4


def test_group_selection_from_the_command_line():
    cfg = load_recipe(["recipe=stage3", "model=unipixel-7b", "model.path=/weights/7b"])
    assert cfg.model.preset == "unipixel-7b" and cfg.presets["model"] == "unipixel-7b"
    assert set(available_presets("model")) == {"tiny", "unipixel-3b", "unipixel-7b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.max_stepz=3"], "unknown key 'trainer.max_stepz'; valid keys here: trainer.accelerator"),
        (["trainer.max_steps=ten"], "key 'trainer.max_steps' has a value of the wrong type"),
        (["model=huge"], "model=huge: no such preset; valid choices: tiny, unipixel-3b, unipixel-7b"),
        (["model.memory.variant=all"], "model.memory.variant='all' is not valid; valid choices: ref_only"),
        (["recipe=stage9"], "recipe=stage9: no such recipe; valid choices: stage1, stage2, stage3"),
        (["data.sources.0.nam=x"], "valid keys here: data.sources.0.name, data.sources.0.split"),
        (["max_steps"], "argument 'max_steps': expected key=value"),
        (["model.mask_decoder.mode=batch"], "valid choices: propagate, independent"),
        # found only when SAM or the Trainer was built, after the shards and the model (a traceback) before
        (["model.mask_decoder.prompt_padding=foo"], "prompt_padding='foo' is not valid; valid choices: released, none"),
        (["trainer.accelerator=foo"], "trainer.accelerator='foo' is not valid; valid choices: auto, cpu, gpu, cuda"),
    ],
)
def test_bad_recipes_name_the_key_and_the_valid_choices(args, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(["recipe=stage3", *args] if not args[0].startswith("recipe=") else args)
    assert message in str(err.value)


def test_unknown_key_in_a_recipe_file(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  - model: tiny\ntrainer:\n  epochs: 3\n")
    with pytest.raises(RecipeError, match="recipe bad.yaml: unknown key 'trainer.epochs'"):
        load_recipe([f"recipe={bad}"])


def test_print_config_round_trips_and_flatten_gives_mlflow_params(capsys):
    cfg = load_recipe(["recipe=stage2", "trainer.max_steps=5"])
    text = print_config(cfg)
    assert capsys.readouterr().out == text
    assert OmegaConf.create(text).trainer.max_steps == 5
    assert OmegaConf.create(text).output_dir == "runs/stage2"  # interpolation resolved
    flat = flatten(cfg)
    assert flat["trainer.max_steps"] == 5 and flat["model.loss.focal"] == 100.0
    assert flat["data.sources.0.name"] == "synthetic"


# ------------------------------------------------------------------------------------- presets beside a recipe file


def _own_recipe(folder: Path, defaults: str) -> Path:
    """A user's recipe file in `folder` (outside the package) with its own `model/my-model.yaml` and
    `data/synthetic.yaml` (the latter shadowing the package's preset of that name) beside it."""
    (folder / "model").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "model" / "my-model.yaml").write_text("preset: tiny\nhidden_tokens: 3\n")
    (folder / "data" / "synthetic.yaml").write_text("name: synthetic\nsynthetic_val: 7\n")
    recipe = folder / "my.yaml"
    recipe.write_text(f"defaults:\n{defaults}stage: 3\n")
    return recipe


def test_presets_beside_a_recipe_file_are_found_first(tmp_path):
    recipe = _own_recipe(tmp_path / "exp", "  - model: my-model\n  - data: synthetic\n  - trainer: cpu\n")
    cfg = load_recipe([f"recipe={recipe}"])  # was: model=my-model: no such preset
    assert cfg.model.hidden_tokens == 3 and cfg.presets["model"] == "my-model"
    assert cfg.data.synthetic_val == 7  # its own data/synthetic.yaml, not the package's (130)
    assert cfg.trainer.accelerator == OmegaConf.load(RECIPES / "trainer" / "cpu.yaml").accelerator  # the package's
    swapped = load_recipe([f"recipe={recipe}", "model=tiny"])  # a package preset chosen on the command line
    assert swapped.model.hidden_tokens == 2 and swapped.presets["model"] == "tiny"  # the schema's default


def test_a_missing_preset_lists_the_choices_of_both_places(tmp_path):
    recipe = _own_recipe(tmp_path / "exp", "  - model: my-model\n")
    with pytest.raises(RecipeError) as err:
        load_recipe([f"recipe={recipe}", "model=my-modle"])
    assert str(err.value) == (
        f"model=my-modle: no such preset; valid choices: my-model (in {tmp_path / 'exp' / 'model'}); "
        f"tiny, unipixel-3b, unipixel-7b (in {RECIPES / 'model'})"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(["recipe=stage3", "model=huge"])  # a package recipe: one place, named once
    assert (
        str(err.value)
        == f"model=huge: no such preset; valid choices: tiny, unipixel-3b, unipixel-7b (in {RECIPES / 'model'})"
    )


def test_presets_beside_a_recipe_need_no_package_recipes_folder(tmp_path, monkeypatch):
    recipe = _own_recipe(tmp_path / "exp", "  - model: my-model\n")
    monkeypatch.setenv("PIXELQA_RECIPES", str(tmp_path / "missing"))  # the package's folder cannot be found
    assert load_recipe([f"recipe={recipe}"]).model.hidden_tokens == 3
    with pytest.raises(RecipeError, match=r"valid choices: my-model \(in .*\) \(no package recipes folder found"):
        load_recipe([f"recipe={recipe}", "model=tiny"])


def _defaults_file(folder: Path, name: str) -> Path:
    """A recipe naming preset `model: name` in its defaults list (quoted: the name is text)."""
    path = folder / "named.yaml"
    path.write_text(f"defaults:\n  - model: '{name}'\n")
    return path


@pytest.mark.parametrize("name", ["../../etc/x", "../my", "/etc/x", "..", "sub/x", "a\\b"])
def test_a_preset_name_may_not_leave_its_group_folder(tmp_path, name):
    recipe = _own_recipe(tmp_path / "exp", "  - model: my-model\n")  # model=../my would read exp/model/../my.yaml
    for args in ([f"recipe={recipe}", f"model={name}"], [f"recipe={_defaults_file(tmp_path, name)}"]):
        with pytest.raises(RecipeError) as err:
            load_recipe(args)
        expected = "a preset is a file name in a model/ folder (e.g. model=NAME for model/NAME.yaml), not a path"
        assert str(err.value) == f"model={name}: {expected}"
