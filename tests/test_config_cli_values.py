"""Command-line values (pixelqa.config): text holding `: ` stays text (a mapping needs braces), and `${...}` in a
value is resolved as in a recipe file, against the composed recipe, after every override."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelqa import fit
from pixelqa.config import RecipeError, flatten, load_recipe, parse_value, print_config, to_object
from pixelqa.launch.executor import slurm_parameters

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# ------------------------------------------------------------------------------------- ': ' in values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/tmp/a: b", "/tmp/a: b"),  # was {'/tmp/a': 'b'} (YAML's block mapping)
        ("/data/run: 2", "/data/run: 2"),
        ("a: b\nc: d", "a: b\nc: d"),
        ("key: [1]", "key: [1]"),
        ("a: b #c", "a: b #c"),
        ("- a", "- a"),  # a block list is text too: lists are written [a]
        ("  /x: y  ", "/x: y"),  # stripped, as YAML strips a plain scalar
        # typed as before
        ("{a: 1, b: x}", {"a": 1, "b": "x"}),
        (" {a: 1}", {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("[a: b]", [{"a": "b"}]),  # inside brackets YAML's flow syntax holds
        ("7", 7),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("a:b", "a:b"),
        ("'/tmp/a: b'", "/tmp/a: b"),
    ],
)
def test_a_mapping_or_list_needs_braces_or_brackets(raw, expected):
    value = parse_value(raw)
    assert value == expected
    if not isinstance(expected, (dict, list)):  # 7 stays an int, "/tmp/a: b" a str (True == 1, "1" != 1)
        assert type(value) is type(expected)
    else:
        assert not isinstance(value, str)


@pytest.mark.parametrize(
    ("key", "value"),
    [("output_dir", "/data/run: 2"), ("data.shards", "/x/y: z"), ("tracking.run_name", "exp: lr 0.1 #2")],
)
def test_a_string_key_takes_text_with_a_colon_space(tmp_path, key, value):
    cfg = load_recipe(["recipe=stage3", f"{key}={value}"])  # was: 'has a value of the wrong type (... DictConfig'
    assert OmegaConf.select(cfg, key) == value
    assert OmegaConf.select(OmegaConf.create(print_config(cfg)), key) == value  # the recipe.yaml dump keeps it


def test_a_string_key_still_refuses_a_mapping_in_braces():
    with pytest.raises(RecipeError, match=r"command line: key 'output_dir' has a value of the wrong type"):
        load_recipe(["recipe=stage3", "output_dir={a: 1}"])


def test_a_dict_key_takes_braces_or_dotted_keys_and_refuses_text_with_a_hint():
    # launcher.additional (dict[str, str]): sbatch options, written {mail-type: END} (pixelqa.launch.settings)
    cfg = load_recipe(["launcher=slurm", "launcher.additional={mail-type: END, mail-user: me@x.org}"])
    assert dict(cfg.launcher.additional) == {"mail-type": "END", "mail-user": "me@x.org"}
    params = slurm_parameters(cfg.launcher, "job")
    assert params["additional_parameters"]["mail-type"] == "END"
    dotted = load_recipe(["launcher=slurm", "launcher.additional.mail-type=END"])  # was: unknown key, valid: ''
    assert dict(dotted.launcher.additional) == {"mail-type": "END"}
    with pytest.raises(RecipeError) as err:
        load_recipe(["launcher=slurm", "launcher.additional=mail-type: END"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("command line: key 'launcher.additional' takes a mapping")
    assert message.endswith("write it in braces: launcher.additional={mail-type: END}")


def test_a_value_that_is_not_yaml_is_one_recipe_error():
    with pytest.raises(RecipeError) as err:
        load_recipe(["recipe=stage3", "output_dir=[a"])  # was yaml's ParserError, a traceback
    assert str(err.value).startswith("command line: key 'output_dir': value '[a' is not valid YAML")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- '${...}' in values


def test_an_interpolation_resolves_against_the_composed_recipe():
    cfg = load_recipe(["recipe=stage3", "output_dir=runs/${model.preset}"])  # was InterpolationKeyError
    assert cfg.output_dir == "runs/tiny"
    # resolved after every override: the preset chosen and the lr set after the value count
    late = load_recipe(
        [
            "recipe=stage3",
            "tracking.run_name=${model.preset}-lr${optim.lr}",
            "output_dir=/data/${name}/${model.preset}",
            "model=unipixel-3b",
            "model.path=/w",
            "optim.lr=0.25",
        ]
    )
    assert late.tracking.run_name == "unipixel-3b-lr0.25" and late.output_dir == "/data/stage3/unipixel-3b"
    recipe = to_object(late)
    assert recipe.tracking.run_name == "unipixel-3b-lr0.25" and recipe.output_dir == "/data/stage3/unipixel-3b"
    # what MLflow params and recipe.yaml store: the resolved text
    assert flatten(late)["tracking.run_name"] == "unipixel-3b-lr0.25"
    assert OmegaConf.create(OmegaConf.to_yaml(late, resolve=True)).output_dir == "/data/stage3/unipixel-3b"


def test_an_interpolation_is_typed_by_the_key_it_sets():
    cfg = load_recipe(["recipe=stage3", "trainer.max_steps=${seed}", "seed=7"])
    assert cfg.trainer.max_steps == 7 and isinstance(to_object(cfg).trainer.max_steps, int)


def test_a_command_line_value_resolves_as_the_same_value_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "stage3.yaml"  # stage3's recipe with one line added; the same name, so ${name} is the same
    recipe.write_text((RECIPES / "stage3.yaml").read_text() + "output_dir: out/${name}-${model.preset}-s${seed}\n")
    from_file = load_recipe([f"recipe={recipe}", "seed=3"])
    from_cli = load_recipe(["recipe=stage3", "output_dir=out/${name}-${model.preset}-s${seed}", "seed=3"])
    assert from_file.output_dir == from_cli.output_dir == "out/stage3-tiny-s3"


def test_a_hash_and_an_escaped_interpolation_stay_text():
    cfg = load_recipe(["recipe=stage3", "output_dir=/data/run #${seed}", "tracking.run_name=\\${model.preset}"])
    assert cfg.output_dir == "/data/run #0"  # ' #' is no comment; the interpolation after it resolves
    assert cfg.tracking.run_name == "${model.preset}"  # OmegaConf's escape: literal text, as in a recipe file


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["output_dir=runs/${nope}"], "output_dir='runs/${nope}' cannot be resolved: Interpolation key 'nope' not"),
        (["tracking.run_name=${model.presett}"], "tracking.run_name='${model.presett}' cannot be resolved"),
        (["trainer.max_steps=${name}"], "trainer.max_steps='${name}' cannot be resolved"),
        (["output_dir=/x/${"], "command line: key 'output_dir': value '/x/${' holds no valid interpolation"),
    ],
)
def test_a_bad_interpolation_is_one_recipe_error(args, start):
    with pytest.raises(RecipeError) as err:
        load_recipe(["recipe=stage3", *args])
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


def test_a_bad_interpolation_in_a_recipe_file_fails_at_load_too(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("output_dir: runs/${nope}\n")
    with pytest.raises(RecipeError, match=r"^output_dir='runs/\$\{nope\}' cannot be resolved"):
        load_recipe([f"recipe={recipe}"])


def test_fit_exits_2_with_one_line_for_a_missing_interpolation_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        fit.main(["recipe=stage3", f"output_dir={tmp_path}/${{nope}}", "--print-config"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recipe error: output_dir='{tmp_path}/${{nope}}' cannot be resolved")
    assert err.count("\n") == 1
    fit.main(["recipe=stage3", f"output_dir={tmp_path}/${{model.preset}}", "--print-config"])
    assert OmegaConf.create(capsys.readouterr().out).output_dir == f"{tmp_path}/tiny"


@pytest.mark.parametrize("raw", ["&run1 x", "*a", "!important", " &a b "])
def test_yaml_anchors_aliases_and_tags_stay_text(raw):
    assert parse_value(raw) == raw.strip()  # YAML would drop `&run1`, fail on an undefined alias, or read a tag


@pytest.mark.parametrize(
    "arg", ["optim.lr=nan", "optim.lr=.inf", "optim.decoder_lr=-.inf", "optim.warmup_ratio=.nan", "model.loss.lm=nan"]
)
def test_a_number_that_is_nan_or_infinite_is_refused_naming_the_key(arg):
    key = arg.split("=")[0]
    with pytest.raises(RecipeError, match=rf"^{re.escape(key)}=(nan|inf|-inf): expected a finite number$"):
        load_recipe(["recipe=stage3", arg])
