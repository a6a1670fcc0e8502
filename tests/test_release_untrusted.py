"""Untrusted model folders and checkpoints: nothing of them runs, nothing outside them is read, and each malformed
file is one line naming the file, the key and what was expected.

Released-format folders are copies of shared/data/unipixel-official-tiny/checkpoint (weights linked, configs
edited); save_pretrained folders are written by the tiny model.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from pixelqa.model import release
from pixelqa.model.config import UniPixelConfig
from pixelqa.model.unipixel import UniPixel

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"
needs_release = pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="shared released-format fixture not present")

# a module a folder's auto_map names: importing it writes the file MARKER (transformers imports a copy of it)
CUSTOM_CODE = """import pathlib
pathlib.Path("MARKER").write_text("the folder's code ran")
from transformers import PretrainedConfig, PreTrainedTokenizerFast


class C(PretrainedConfig):
    model_type = "custom"


class T(PreTrainedTokenizerFast):
    pass
"""


TEXT_CONFIG = json.loads((CHECKPOINT / "config.json").read_text())["text_config"] if CHECKPOINT.is_dir() else {}


def _copy(tmp_path: Path, name: str = "ckpt") -> Path:
    """A writable copy of the fixture checkpoint (weights linked)."""
    from model_fixtures import released_copy

    return released_copy(tmp_path, name)


def _edit(folder: Path, file: str, **changes) -> None:
    data = json.loads((folder / file).read_text())
    data.update(changes)
    (folder / file).write_text(json.dumps(data))


def _build(folder: Path) -> UniPixel:
    return UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(folder)))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ---- F2: custom code named by a folder ----------------------------------------------------------------------


@needs_release
@pytest.mark.parametrize(
    ("file", "auto_map"),
    [
        ("config.json", {"AutoConfig": "custom.C", "AutoModel": "custom.C"}),
        ("tokenizer_config.json", {"AutoTokenizer": [None, "custom.T"]}),
        ("preprocessor_config.json", {"AutoImageProcessor": "custom.C"}),
        ("video_preprocessor_config.json", {"AutoVideoProcessor": "custom.C"}),
    ],
)
def test_a_folder_naming_custom_code_is_refused_without_a_prompt(tmp_path, monkeypatch, file, auto_map):
    folder = _copy(tmp_path)
    (folder / "custom.py").write_text(CUSTOM_CODE.replace("MARKER", str(tmp_path / "RAN")))
    _edit(folder, file, auto_map=auto_map, trust_remote_code=True)
    asked: list[str] = []

    def answer_yes(prompt: str = "") -> str:  # a user who types y at transformers' prompt
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer_yes)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    assert _one_line(err).startswith(f"{folder / file}: auto_map={auto_map!r} names custom code")
    assert asked == [] and not (tmp_path / "RAN").exists()
    # the same refusal from the folder inspection that fit / preflight / parity use, and from the processor alone
    with pytest.raises(release.ReleaseError, match="auto_map"):
        release.inspect_folder("unipixel-3b", str(folder))
    plain = release.ModelFolder("release", folder, json.loads((folder / "config.json").read_text()))
    with pytest.raises(release.ReleaseError, match="auto_map"):
        release.build_processor(plain)
    assert asked == [] and not (tmp_path / "RAN").exists()


@needs_release
def test_predict_refuses_a_custom_code_folder_in_one_line(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from pixelqa.predict import __main__ as cli

    folder = _copy(tmp_path)
    (folder / "custom.py").write_text(CUSTOM_CODE.replace("MARKER", str(tmp_path / "RAN")))
    _edit(folder, "config.json", auto_map={"AutoConfig": "custom.C"})
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")
    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(image)
    argv = ["--model", str(folder), "--media", str(image), "--text", "hi", "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --model: {folder / 'config.json'}: auto_map=") and len(err.splitlines()) == 1
    assert not (tmp_path / "RAN").exists()


# ---- F11: the shard index stays inside its folder ---------------------------------------------------------


@needs_release
@pytest.mark.parametrize(
    "shard",
    [
        "../../../../../../etc/passwd",
        str(CHECKPOINT / "model.safetensors"),  # another folder's complete weights: loaded silently before
        "../ckpt/model.safetensors",
        "sub/model.safetensors",
        "..",
        "",
    ],
)
def test_the_shard_index_may_only_name_files_of_its_folder(tmp_path, shard):
    folder = _copy(tmp_path, "mine")
    (folder / "model.safetensors").unlink()
    (tmp_path / "ckpt").symlink_to(CHECKPOINT)  # `../ckpt/...` names an existing file outside the folder
    names = json.loads((CHECKPOINT.parent / "manifest.json").read_text())["layout"]["tensors"]
    (folder / release.INDEX_FILE).write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    line = _one_line(err)
    assert line.startswith(f"{folder / release.INDEX_FILE}: weight_map[") and f"={shard!r}; expected the plain" in line
    assert "passwd: not a readable" not in line


@needs_release
@pytest.mark.parametrize(
    ("index", "said"),
    [
        ({"weight_map": ["model.safetensors"]}, "weight_map=['model.safetensors']; expected an object"),
        ({"weight_map": {"model.norm.weight": 5}}, "weight_map['model.norm.weight']=5; expected the plain file"),
        ({"metadata": {}}, "weight_map=None; expected an object"),
        ([1, 2], "expected a JSON object, got a list"),
    ],
)
def test_a_malformed_shard_index_is_one_line(tmp_path, index, said):
    folder = _copy(tmp_path)
    (folder / release.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    assert _one_line(err) == f"{folder / release.INDEX_FILE}: {said}" or said in _one_line(err)
    assert _one_line(err).startswith(str(folder / release.INDEX_FILE))


# ---- F10: malformed configs, templates and weights --------------------------------------------------------


@needs_release
@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1, 2]", "expected a JSON object, got a list"),
        ('"config"', "expected a JSON object, got a str"),
        ("{", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_config_that_is_not_an_object_is_one_line(tmp_path, text, said):
    folder = _copy(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    assert _one_line(err).startswith(f"{folder / 'config.json'}: {said}")


@needs_release
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"sam2_image_size": "1e9"}, "sam2_image_size='1e9'; expected an integer from 16 to 4096, a multiple of 16"),
        ({"sam2_image_size": 10**9}, "sam2_image_size=1000000000; expected an integer from 16 to 4096"),
        ({"sam2_image_size": 100}, "sam2_image_size=100; expected an integer from 16 to 4096, a multiple of 16"),
        ({"sam2_hidden_tokens": "2"}, "sam2_hidden_tokens='2'; expected an integer from 1 to 64"),
        ({"sam2_hidden_tokens": True}, "sam2_hidden_tokens=True; expected an integer"),
        ({"sam2_batch_mode": "yes"}, "sam2_batch_mode='yes'; expected true or false"),
        ({"seg_token_id": "151666"}, "seg_token_id='151666'; expected the integer id of <|seg|>"),
        ({"text_config": {**TEXT_CONFIG, "hidden_size": "64"}}, "Field 'hidden_size' expected int"),
        ({"vision_config": [1]}, "Field 'vision_config' with value [1]"),
    ],
)
def test_a_stored_value_of_the_wrong_type_names_the_file_and_key(tmp_path, changes, said):
    folder = _copy(tmp_path)
    _edit(folder, "config.json", **changes)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    line = _one_line(err)
    assert line.startswith(f"{folder / 'config.json'}: ") and said in line


@needs_release
@pytest.mark.parametrize("file", ["preprocessor_config.json", "video_preprocessor_config.json"])
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"patch_size": "14"}, "patch_size='14'; expected a positive integer"),
        ({"temporal_patch_size": 1.5}, "temporal_patch_size=1.5; expected a positive integer"),
        ({"merge_size": True}, "merge_size=True; expected a positive integer"),
        # well-typed, but not the ViT's geometry: frames would be cut into tokens the ViT does not read
        ({"patch_size": 16}, "patch_size=16; expected 14, the config.json vision_config.patch_size"),
        ({"merge_size": 1}, "merge_size=1; expected 2, the config.json vision_config.spatial_merge_size"),
        ({"image_mean": "abc"}, "image_mean='abc'; expected 3 numbers"),
        ({"image_std": [0.2, 0, 0.3]}, "image_std=(0.2, 0, 0.3); expected 3 positive numbers"),
        ({"rescale_factor": "x"}, "rescale_factor='x'; expected a positive number"),
        ({"min_pixels": -5}, "size shortest_edge=-5, longest_edge=12845056 (min_pixels / max_pixels)"),
        ({"min_pixels": 5000, "max_pixels": 100}, "size shortest_edge=5000, longest_edge=100"),
    ],
)
def test_a_processor_value_the_vit_cannot_use_names_the_file_and_key(tmp_path, file, changes, said):
    folder = _copy(tmp_path)
    _edit(folder, file, **changes)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    line = _one_line(err)
    assert line.startswith(f"{folder / file}: ") and said in line, line


@needs_release
@pytest.mark.parametrize(
    ("template", "said"),
    [
        # a sandbox escape: transformers' sandboxed Jinja refuses it (SecurityError); it never runs
        ("{{ cycler.__init__.__globals__.os.system('touch RAN') }}", "SecurityError: access to attribute"),
        ("{% for m in %}", "TemplateSyntaxError"),
        ("{{ raise_exception('no') }}", "TemplateError: no"),
        ("{% if messages[0]['role'] == 'user' %}{{ 1 / 0 }}{% endif %}", "ZeroDivisionError"),
    ],
)
def test_a_chat_template_that_cannot_render_is_refused_when_the_model_loads(tmp_path, monkeypatch, template, said):
    folder = _copy(tmp_path)
    good = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text(template + good)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    line = _one_line(err)
    assert line.startswith(f"{folder / 'chat_template.jinja'}: the chat template cannot be rendered (") and said in line
    assert not (tmp_path / "RAN").exists()


@needs_release
@pytest.mark.parametrize(
    ("file", "text", "said"),
    [
        ("tokenizer.json", "{not json", "the folder's tokenizer files (tokenizer.json, "),
        ("tokenizer_config.json", '{"chat_template": 5}', "tokenizer_config.json: chat_template=5; expected one Jinja"),
    ],
)
def test_a_broken_tokenizer_is_one_line(tmp_path, file, text, said):
    folder = _copy(tmp_path)
    if file == "tokenizer_config.json":  # the template comes from the tokenizer config when there is no .jinja
        (folder / "chat_template.jinja").unlink()
        _edit(folder, file, **json.loads(text))
    else:
        (folder / file).write_text(text)
    with pytest.raises(release.ReleaseError) as err:
        _build(folder)
    assert _one_line(err).startswith(str(folder)) and said in _one_line(err)


# ---- F10: save_pretrained folders and raw pickles, --trust-checkpoint ------------------------------------------


class StateDict(dict):
    """A state dict type torch.load(weights_only=True) does not know: unpickling it imports this module."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    from model_fixtures import cached_model

    folder = tmp_path_factory.mktemp("sp") / "saved"
    cached_model().save_pretrained(folder)
    return folder


def _variant(saved: Path, tmp_path: Path) -> Path:
    out = tmp_path / "sp"
    shutil.copytree(saved, out)
    return out


def test_a_save_pretrained_folder_needing_unpickling_is_one_line_and_trust_is_honoured(saved, tmp_path):
    from pixelqa.predict import load_model
    from pixelqa.predict.errors import PredictInputError

    folder = _variant(saved, tmp_path)
    state = torch.load(saved / "unipixel.pt", weights_only=True)
    torch.save(StateDict(state), folder / "unipixel.pt")
    with pytest.raises(PredictInputError) as err:
        load_model(folder, "cpu")
    line = _one_line(err)
    assert line.startswith(f"--model: {str(folder / 'unipixel.pt')!r} needs unpickling of ")
    assert "StateDict" in line and line.endswith("Pass --trust-checkpoint only for a file you trust")
    assert "weights_only" not in line
    # --trust-checkpoint means the same for this format as for a Lightning checkpoint: plain unpickling
    model, info = load_model(folder, "cpu", trust=True)
    assert info["format"] == "save_pretrained"
    for k, v in state.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    # the library API by default: torch.load(weights_only=True), a refusal in one line naming the file and the type
    with pytest.raises(ValueError) as err:
        UniPixel.from_pretrained(folder)
    assert _one_line(err) == (
        f"{folder / 'unipixel.pt'}: needs unpickling of {StateDict.__module__}.StateDict, which could run code; "
        "refused (save_pretrained writes tensors only)"
    )


def test_a_code_running_save_pretrained_folder_never_runs_it(saved, tmp_path):
    from pixelqa.predict import load_model
    from pixelqa.predict.errors import PredictInputError

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'RAN'}",))

    folder = _variant(saved, tmp_path)
    torch.save({"w": RunsCode()}, folder / "unipixel.pt")
    with pytest.raises(PredictInputError) as err:
        load_model(folder, "cpu")
    assert "needs unpickling of posix.system" in _one_line(err) and not (tmp_path / "RAN").exists()
    with pytest.raises(
        ValueError, match=r"unipixel.pt: needs unpickling of posix.system, which could run code; refused"
    ):
        UniPixel.from_pretrained(folder)
    assert not (tmp_path / "RAN").exists()


@pytest.mark.parametrize(
    ("config", "weights", "said"),
    [
        ("[1]", None, "unipixel_config.json: expected a JSON object (a saved UniPixelConfig), got a list"),
        ('{"preset": "tiny", "no_such_key": 1}', None, "unipixel_config.json: not a UniPixelConfig of this version"),
        (
            '{"seg_head": "released", "mask_decoder": 5}',
            None,
            "unipixel_config.json: mask_decoder=5; expected an object",
        ),
        ("{", None, "unipixel_config.json: not valid JSON"),
        (None, [1, 2], "unipixel.pt: holds a list, expected a state dict"),
        (None, {"l2m.mlp.0.weight": torch.zeros(3, 3)}, "unipixel.pt: does not fit the model of"),
        (None, b"not a checkpoint", "cannot be read as a checkpoint"),
    ],
)
def test_a_malformed_save_pretrained_folder_is_one_line(saved, tmp_path, config, weights, said):
    from pixelqa.predict import load_model
    from pixelqa.predict.errors import PredictInputError

    folder = _variant(saved, tmp_path)
    if config is not None:
        (folder / "unipixel_config.json").write_text(config)
    if isinstance(weights, bytes):
        (folder / "unipixel.pt").write_bytes(weights)
    elif weights is not None:
        torch.save(weights, folder / "unipixel.pt")
    with pytest.raises(PredictInputError) as err:
        load_model(folder, "cpu")
    line = _one_line(err)
    assert line.startswith("--model: ") and said in line and str(folder) in line


def test_a_raw_pickle_is_refused_without_torchs_warning(tmp_path):
    from pixelqa.predict import load_model
    from pixelqa.predict.errors import PredictInputError

    path = tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps(argparse.Namespace(code="would run"), protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PredictInputError) as err:
            load_model(path, "cpu")
    assert _one_line(err) == f"--model: {str(path)!r} cannot be read as a checkpoint (not a torch.save file)"
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []


# ---- evaluate: a checkpoint's stored settings are plain data ---------------------------------------------------


def test_stored_model_settings_are_merged_as_plain_data(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from pixelqa.config import RecipeError, flatten, load_recipe, to_object
    from pixelqa.eval.model_loading import adopt_trained_model

    monkeypatch.setenv("PIXELQA_TEST_SECRET", "raster")  # a valid value: resolved, it would pass unnoticed
    stored = {
        "memory": {"pooling": "${oc.env:PIXELQA_TEST_SECRET}"},
        "mask_decoder": {"propagation": "\\${oc.env:PIXELQA_TEST_SECRET}"},  # already escaped once: kept as it is
    }
    ckpt = tmp_path / "stored.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": stored}}, ckpt)
    cfg = load_recipe(["recipe=stage3"])
    lines = adopt_trained_model(cfg, [], ckpt)
    assert lines == [
        "model settings from the checkpoint: model.memory.pooling 'window' -> '${oc.env:PIXELQA_TEST_SECRET}'; "
        "model.mask_decoder.propagation 'forward' -> '\\\\${oc.env:PIXELQA_TEST_SECRET}'"
    ]
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["memory"]["pooling"] == "${oc.env:PIXELQA_TEST_SECRET}"
    assert model["mask_decoder"]["propagation"] == "\\${oc.env:PIXELQA_TEST_SECRET}"
    recorded = json.dumps(flatten(cfg)) + OmegaConf.to_yaml(cfg, resolve=True)
    assert "raster" not in recorded
    assert to_object(cfg).model.memory.pooling == "${oc.env:PIXELQA_TEST_SECRET}"
    # OmegaConf's missing value is not plain data either: refused in one line
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"memory": {"pooling": "???"}}}}, ckpt)
    with pytest.raises(RecipeError, match=r"its model.memory.pooling='\?\?\?' cannot be taken as plain data"):
        adopt_trained_model(load_recipe(["recipe=stage3"]), [], ckpt)


def test_the_model_build_takes_stored_and_recipe_strings_as_plain_data(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from pixelqa.config import load_recipe, to_object
    from pixelqa.eval.model_loading import load_model as eval_load_model
    from pixelqa.predict import load_model
    from pixelqa.train.module import module_class

    monkeypatch.setenv("PIXELQA_TEST_SECRET", "raster")  # a valid pooling: resolved, the model would build with it
    secret = "${oc.env:PIXELQA_TEST_SECRET}"
    said = re.escape(f"model.memory.pooling: got {secret!r}, expected one of")  # the text, not the variable
    # predict --model on a fit checkpoint whose stored model settings hold the string
    cfg = load_recipe(["recipe=stage3"])
    module = module_class(3)(
        model=OmegaConf.to_container(cfg.model, resolve=True), optim={"lr": 0.0, "decoder_lr": 0.0}, total_steps=1
    )
    hp = dict(module.hparams)
    hp["model"] = {**hp["model"], "memory": {**hp["model"]["memory"], "pooling": secret}}
    ckpt = tmp_path / "stored.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp, "pixelqa_stage": 3}, ckpt)
    with pytest.raises(ValueError, match=said):
        load_model(ckpt, "cpu")
    # evaluate's build of a recipe holding the string as text (as adopt_trained_model leaves a checkpoint's)
    OmegaConf.update(cfg, "model.memory.pooling", "\\" + secret, merge=False)
    recipe = to_object(cfg)
    assert recipe.model.memory.pooling == secret
    with pytest.raises(ValueError, match=said):
        eval_load_model(recipe, None)


def test_export_honours_trust_checkpoint_for_a_save_pretrained_folder(saved, tmp_path, capsys):
    from pixelqa import export

    folder = _variant(saved, tmp_path)
    state = torch.load(saved / "unipixel.pt", weights_only=True)
    torch.save(StateDict(state), folder / "unipixel.pt")
    assert export.main([str(folder), str(tmp_path / "out1")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "needs unpickling of" in line and line.endswith("only for a file you trust")
    assert not (tmp_path / "out1").exists()
    assert export.main([str(folder), str(tmp_path / "out2"), "--trust-checkpoint"]) == 0
    assert (tmp_path / "out2" / "config.json").is_file()


@needs_release
def test_without_a_video_processor_config_videos_are_cut_and_normalised_as_the_images(tmp_path):
    folder = _copy(tmp_path)
    (folder / "video_preprocessor_config.json").unlink()
    _edit(folder, "preprocessor_config.json", image_mean=[0.5, 0.25, 0.125], image_std=[0.2, 0.3, 0.4])
    processor = release.build_processor(release.inspect_folder("unipixel-3b", str(folder)))
    image, video = processor.image_processor, processor.video_processor
    for name in ("patch_size", "merge_size", "temporal_patch_size", "rescale_factor"):
        assert getattr(video, name) == getattr(image, name), name
    # transformers' defaults are CLIP's mean and std: the folder's own values must reach the video frames too
    assert list(video.image_mean) == [0.5, 0.25, 0.125] and list(video.image_std) == [0.2, 0.3, 0.4]
