"""`pixelqa.evaluate ckpt=...` (single benchmark and suite) scores the model that was trained: the checkpoint's stored
model config (hyper_parameters.model) is built, a `model.KEY=...` typed on the command line wins with a line, and
MLflow / the suite fingerprint record the values used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelqa.config import RecipeError, load_recipe
from pixelqa.eval.model_loading import adopt_trained_model, typed_model_keys

# shape-keeping switches (SWITCH_CHOICES and others) and one that changes weight shapes (the demo scale's rank 32)
TRAINED = ["model.memory.pooling=raster", "model.mask_decoder.multimask=false", "model.lora.rank=16"]
TAKEN_LINE = (
    "model settings from the checkpoint: model.lora.rank 32 -> 16; model.mask_decoder.multimask True -> False; "
    "model.memory.pooling 'window' -> 'raster'"
)


def save_fit_checkpoint(path: Path, args: list[str], with_model: bool = True) -> Path:
    """A stage-3 checkpoint of the tiny model as pixelqa.fit saves it (hyper_parameters.model: the plain config)."""
    from omegaconf import OmegaConf

    from pixelqa.train.module import module_class

    cfg = load_recipe(["recipe=stage3", *args])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    module = module_class(3)(model=model, optim={"lr": 0.0, "decoder_lr": 0.0}, total_steps=1, seed=0)
    hparams = dict(module.hparams) if with_model else {"stage": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "pixelqa_stage": 3}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_fit_checkpoint(tmp_path_factory.mktemp("trained") / "last.ckpt", TRAINED)


@pytest.fixture
def built(monkeypatch) -> list:
    """The models evaluate builds (the real load_model, recorded; evaluate imports it when it runs)."""
    from pixelqa.eval import model_loading

    models: list = []
    real = model_loading.load_model

    def spy(recipe, ckpt_path):
        models.append(real(recipe, ckpt_path))
        return models[-1]

    monkeypatch.setattr(model_loading, "load_model", spy)
    return models


def _eval_args(tmp_path: Path, ckpt: Path) -> list[str]:
    args = ["recipe=stage3", f"ckpt={ckpt}", f"data.shards={tmp_path / 'shards'}", "data.synthetic_val=4"]
    return [*args, "eval.max_samples=2", f"output_dir={tmp_path / 'run'}", "tracking.log_overlays=false"]


def test_evaluate_builds_the_trained_model_says_so_and_records_it(tmp_path, ckpt, built, capsys):
    from mlflow import MlflowClient

    from pixelqa import evaluate

    db = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracking = [f"tracking.tracking_uri={db}", f"tracking.artifact_location={tmp_path / 'art'}"]
    metrics = evaluate.run([*_eval_args(tmp_path, ckpt), *tracking])
    assert metrics["synthetic/samples_scored"] == 2
    (model,) = built
    assert model.cfg.memory.pooling == "raster" and model.cfg.mask_decoder.multimask is False
    assert model.cfg.lora.rank == 16  # a shape-changing setting loads too (a state_dict error before)
    assert TAKEN_LINE in capsys.readouterr().out.splitlines()
    client = MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name("pixelqa").experiment_id])
    params = run.data.params
    assert params["model.memory.pooling"] == "raster" and params["model.mask_decoder.multimask"] == "False"
    assert params["model.lora.rank"] == "16"


def test_a_model_key_typed_on_the_command_line_wins_with_its_line(tmp_path, ckpt, built, capsys):
    from pixelqa import evaluate

    evaluate.run([*_eval_args(tmp_path, ckpt), "tracking.enabled=false", "model.memory.pooling=window"])
    (model,) = built
    assert model.cfg.memory.pooling == "window" and model.cfg.mask_decoder.multimask is False
    out = capsys.readouterr().out.splitlines()
    assert "model.memory.pooling: trained 'raster', evaluating 'window' (given on the command line)" in out
    taken = next(x for x in out if x.startswith("model settings from the checkpoint:"))
    assert "pooling" not in taken and "model.mask_decoder.multimask True -> False" in taken
    # a typed key that changes a weight shape cannot apply: one line, exit status 2
    with pytest.raises(SystemExit) as exc:
        evaluate.main([*_eval_args(tmp_path, ckpt), "tracking.enabled=false", "model.lora.rank=8"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "model.lora.rank: trained 16, evaluating 8 (given on the command line)" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and err.startswith(f"recipe error: ckpt={ckpt}: weight ") and "(8, 64) here" in err


def test_typed_keys_and_checkpoints_without_a_model_config(tmp_path):
    from omegaconf import OmegaConf

    assert typed_model_keys(["model=unipixel-3b", "model.lora.rank=8", "modelx=1", "seed=1"]) == ["preset", "lora.rank"]
    old = save_fit_checkpoint(tmp_path / "old.ckpt", TRAINED, with_model=False)
    cfg = load_recipe(["recipe=stage3"])
    before = OmegaConf.to_container(cfg.model)
    (line,) = adopt_trained_model(cfg, [], old)
    assert line.startswith(f"ckpt={old} records no model config") and OmegaConf.to_container(cfg.model) == before
    assert adopt_trained_model(cfg, [], None) == []
    # a file the checkpoint names that is not on this machine: one line naming the key to give
    moved = tmp_path / "moved.ckpt"
    gone = tmp_path / "gone.pt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"mask_decoder": {"checkpoint": str(gone)}}}}, moved)
    with pytest.raises(RecipeError) as err:
        adopt_trained_model(load_recipe(["recipe=stage3"]), [], moved)
    assert str(err.value) == (
        f"model.mask_decoder.checkpoint={str(gone)!r} (from ckpt={moved}) does not exist here; give "
        "model.mask_decoder.checkpoint=PATH on the command line"
    )
    typed = ["model.mask_decoder.checkpoint=null"]
    assert adopt_trained_model(load_recipe(["recipe=stage3", *typed]), typed, moved) == [
        f"model.mask_decoder.checkpoint: trained {str(gone)!r}, evaluating None (given on the command line)"
    ]


@pytest.fixture(scope="module")
def revos_shards(tmp_path_factory) -> Path:
    from fixtures_video import build_revos

    from pixelqa.data.shards import build_shards

    root = tmp_path_factory.mktemp("suite")
    build_revos(root / "raw")
    build_shards("revos", root / "raw", root / "shards", split="valid", progress=False)
    return root / "shards"


def test_the_suite_fingerprints_and_builds_the_trained_settings(revos_shards, tmp_path, ckpt, monkeypatch, capsys):
    import pixelqa.eval.generation as gen
    import pixelqa.eval.model_loading as ml
    from pixelqa.evaluate import run

    recipes: list = []

    def load(recipe, ckpt_path):  # the fingerprint and what the model is built from are under test, not scoring
        recipes.append(recipe)
        return torch.nn.Identity()

    monkeypatch.setattr(ml, "load_model", load)
    monkeypatch.setattr(gen, "default_answer_fn", lambda model, cap=None: (lambda r: ("no", []), "stub"))
    args = ["suite=paper", "suite.only=revos", f"data.shards={revos_shards}", f"output_dir={tmp_path / 'run'}"]
    run([*args, f"ckpt={ckpt}", "tracking.enabled=false"])
    assert TAKEN_LINE in capsys.readouterr().out.splitlines()
    assert recipes[0].model.memory.pooling == "raster" and recipes[0].model.lora.rank == 16
    provenance = json.loads((tmp_path / "run" / "suite-paper" / "revos" / "result.json").read_text())["provenance"]
    assert provenance["fingerprint"]["model.memory.pooling"] == "raster"
    assert provenance["fingerprint"]["model.mask_decoder.multimask"] is False
    assert provenance["recipe"]["model.memory.pooling"] == "raster"
