"""A resume with settings changed since its checkpoint says so: every recipe key that can change a number is
compared with the recipe the checkpoint records (printed, tagged pixelqa.resumed_with), those that change what a
stream slot holds are stream changes (refused without --allow-stream-change), the first start's recipe.yaml stays
and the resume writes its own beside it; each resume tags the step it continued from (pixelqa.resumed_at_step);
the validation shards' identities are MLflow params (val_stream/manifest/...) and are compared too. A checkpoint
written before recipes were recorded still resumes, with one line saying its settings could not be compared."""

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pixelqa import fit, tracking
from pixelqa.config import load_recipe, to_object
from pixelqa.data.layout import shard_dir
from pixelqa.train.datamodule import build_synthetic
from pixelqa.train.guards import read_resume_metadata, shards_identity, stream_changes, stream_fingerprint

STORE = "mlruns.db"


def _args(work: Path, out: Path, shards: Path, *extra: str) -> list[str]:
    return [
        "recipe=stage3",
        f"data.shards={shards}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "data.val_samples=4",
        "data.batch_size=2",
        "trainer.max_steps=4",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=0",
        "eval.after_fit=false",
        f"output_dir={out}",
        f"tracking.tracking_uri=sqlite:///{work / STORE}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One 4-step run (checkpoints at steps 2 and 4), its synthetic shards built on first use."""
    work = tmp_path_factory.mktemp("resume_settings")
    fit.run(_args(work, work / "run", work / "shards"))
    return work


def _killed_copy(base: Path, tmp_path: Path) -> tuple[list[str], str]:
    """A copy of the base run (folder and MLflow store) as a kill after the step-2 checkpoint leaves it; returns
    the args that continue it (without ckpt=) and its MLflow run id."""
    shutil.copytree(base / "run", tmp_path / "run", symlinks=True)
    shutil.copy(base / STORE, tmp_path / STORE)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "last.ckpt").unlink()
    (ckpts / "step000004.ckpt").unlink()
    (ckpts / "last.ckpt").symlink_to("step000002.ckpt")
    run_id = (ckpts / "mlflow_run_id.txt").read_text().strip()
    return _args(tmp_path, tmp_path / "run", base / "shards"), run_id


def _client(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / STORE}")


def _lines(out: str, start: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(start)]


def test_the_shards_identities_are_mlflow_params_and_checkpoints_record_the_recipe(base):
    (run,) = _client(base).search_runs([_client(base).get_experiment_by_name("pixelqa").experiment_id])
    params = run.data.params
    val = shards_identity(shard_dir(base / "shards", "synthetic", "val"))
    train = shards_identity(shard_dir(base / "shards", "synthetic", "train"))
    assert val.startswith("4 samples, shards sha256:") and train.startswith("16 samples, shards sha256:")
    assert params["val_stream/manifest/synthetic/val"] == val
    # built on first use, after the run started: logged once known, not as 'None'
    assert params["stream/manifest/synthetic/train"] == train
    assert params["stream/prompt_mode"] == "keep" and params["stream/max_tokens"] == "1024"
    saved = read_resume_metadata(base / "run" / "checkpoints" / "last.ckpt")  # plain data: no code unpickled
    assert saved["pixelqa_val_stream"] == {"manifest/synthetic/val": val}
    assert saved["pixelqa_recipe"]["trainer.gradient_clip_val"] == 1.0
    assert saved["pixelqa_recipe"]["data.prompt_mode"] == "keep"
    assert "pixelqa.resumed_at_step" not in run.data.tags and "pixelqa.resumed_with" not in run.data.tags


def test_a_resume_names_every_changed_setting_tags_it_and_keeps_the_first_recipe(base, tmp_path, capsys):
    args, run_id = _killed_copy(base, tmp_path)
    # the validation shards rebuilt with other samples, in another folder (the training shards the same)
    shards = tmp_path / "shards"
    shutil.copytree(base / "shards" / "synthetic" / "train", shard_dir(shards, "synthetic", "train"))
    build_synthetic(shards, "val", 3)
    args = [a for a in args if not a.startswith(("data.shards=", "data.val_samples="))]
    changed = [
        f"data.shards={shards}",
        "data.val_samples=3",
        "trainer.gradient_clip_val=0.5",
        "eval.max_samples=3",  # caps validation: changes its numbers
        "trainer.keep_checkpoints=3",  # neither this nor output_dir, tracking.*, ckpt can change a number
    ]
    capsys.readouterr()
    metrics = fit.run([*args, *changed, "ckpt=last"])
    assert metrics["train/steps"] == 4
    out = capsys.readouterr().out
    (line,) = _lines(out, "resuming with changed settings: ")
    for said in (
        "trainer.gradient_clip_val: 1.0 -> 0.5",
        "eval.max_samples: None -> 3",
        "data.val_samples: 4 -> 3",
        f"data.shards: '{base / 'shards'}' -> '{shards}'",
        "val_stream/manifest/synthetic/val: '4 samples, shards sha256:",
    ):
        assert said in line, said
    for quiet in ("keep_checkpoints", "output_dir", "tracking.", "ckpt", "presets"):
        assert quiet not in line, quiet

    run = _client(tmp_path).get_run(run_id)
    tag = run.data.tags["pixelqa.resumed_with"]
    assert tag.startswith("at step 2: ") and "trainer.gradient_clip_val: 1.0 -> 0.5" in tag
    assert "eval.max_samples: None -> 3" in tag and "val_stream/manifest/synthetic/val" in tag
    assert run.data.tags["pixelqa.resumed_at_step"] == "2"
    # params keep the first start's values (MLflow fixes them), and so does recipe.yaml; the resume's beside it
    assert run.data.params["trainer.gradient_clip_val"] == "1.0"
    folder = tmp_path / "run"
    assert "gradient_clip_val: 1.0\n" in (folder / "recipe.yaml").read_text()
    assert "gradient_clip_val: 0.5\n" in (folder / "recipe.resumed-step000002.yaml").read_text()
    assert f"resolved recipe: {folder / 'recipe.resumed-step000002.yaml'}" in out
    artifacts = {a.path for a in _client(tmp_path).list_artifacts(run_id)}
    assert {"recipe.yaml", "recipe.resumed-step000002.yaml"} <= artifacts
    # the checkpoints written since record the new settings: the next resume compares with these
    saved = read_resume_metadata(folder / "checkpoints" / "last.ckpt")
    assert saved["pixelqa_recipe"]["trainer.gradient_clip_val"] == 0.5
    assert saved["pixelqa_val_stream"]["manifest/synthetic/val"].startswith("3 samples")


def test_a_resume_tags_the_step_it_continues_from(base, tmp_path, capsys):
    args, run_id = _killed_copy(base, tmp_path)
    capsys.readouterr()
    fit.run([*args, "ckpt=last"])
    out = capsys.readouterr().out
    assert not _lines(out, "resuming with changed settings") and "records no recipe" not in out
    client = _client(tmp_path)
    tags = client.get_run(run_id).data.tags
    assert tags["pixelqa.resumed_at_step"] == "2" and "pixelqa.resumed_with" not in tags
    # the redone steps 2 and 3 have a point from before the kill and one after; read the last point per step
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 2, 3, 3]
    for step in (2, 3):  # nothing changed: the redone step's loss is the one logged before the kill
        assert len({m.value for m in history if m.step == step}) == 1, step


def test_a_resume_with_another_prompt_mode_is_a_stream_change(base, tmp_path, capsys):
    args, run_id = _killed_copy(base, tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        fit.main([*args, "data.prompt_mode=point", "ckpt=last"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "prompt_mode: 'keep' -> 'point'" in message and "--allow-stream-change" in message
    assert not list((tmp_path / "run").glob("recipe.resumed-*"))  # a refused resume writes nothing

    metrics = fit.run([*args, "data.prompt_mode=point", "ckpt=last", "--allow-stream-change"])
    assert metrics["train/steps"] == 4
    out = capsys.readouterr().out
    assert "resuming on a changed data stream (prompt_mode: 'keep' -> 'point')" in out
    assert "resuming with changed settings: data.prompt_mode: 'keep' -> 'point'" in out
    tag = _client(tmp_path).get_run(run_id).data.tags["pixelqa.resumed_with"]
    assert "data.prompt_mode: 'keep' -> 'point'" in tag and "stream/prompt_mode: 'keep' -> 'point'" in tag


def test_a_checkpoint_without_a_recorded_recipe_resumes_with_one_line(base, tmp_path, capsys):
    args, run_id = _killed_copy(base, tmp_path)
    path = tmp_path / "run" / "checkpoints" / "step000002.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("pixelqa_recipe", "pixelqa_val_stream"):  # as an earlier version wrote it
        ckpt.pop(key, None)
    for key in ("prompt_mode", "memory_prompts", "max_tokens", "min_pixels", "max_pixels", "image_min_pixels"):
        ckpt["pixelqa_stream"].pop(key, None)
    torch.save(ckpt, path)
    capsys.readouterr()
    metrics = fit.run([*args, "trainer.gradient_clip_val=0.5", "ckpt=last"])
    assert metrics["train/steps"] == 4
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "records no recipe" in ln]
    assert str(path.parent / "last.ckpt") in line and "could not be compared" in line
    assert not _lines(out, "resuming with changed settings")  # nothing it could compare changed
    tags = _client(tmp_path).get_run(run_id).data.tags
    assert tags["pixelqa.resumed_at_step"] == "2" and "pixelqa.resumed_with" not in tags


def _recipe(*args: str):
    return to_object(load_recipe(["recipe=stage3", *args]))


@pytest.mark.parametrize(
    "arg,key",
    [
        ("data.prompt_mode=point", "prompt_mode"),
        ("data.memory_prompts=point_box", "memory_prompts"),
        ("data.max_tokens=512", "max_tokens"),
        ("data.min_pixels=3136", "min_pixels"),
        ("data.max_pixels=50176", "max_pixels"),
        ("data.image_min_pixels=3136", "image_min_pixels"),
        ("data.image_max_pixels=50176", "image_max_pixels"),
    ],
)
def test_what_a_slot_holds_is_in_the_stream_fingerprint(arg, key):
    a = stream_fingerprint(_recipe(), world=1, accumulate=1)
    b = stream_fingerprint(_recipe(arg), world=1, accumulate=1)
    (change,) = stream_changes(a, b)
    assert change.startswith(f"{key}: ")


def test_recipe_changes_leave_out_only_what_cannot_change_a_number(capsys):
    old = {
        "output_dir": "a",
        "ckpt": None,
        "tracking.tracking_uri": "sqlite:///a.db",
        "launcher.partition": "x",
        "data.num_workers": 0,
        "trainer.max_steps": 4,
        "trainer.precision": "32-true",
        "trainer.tf32": True,
        "eval.max_samples": None,
        "data.val_sources.0.name": "synthetic",
        "model.lora.rank": 32,
        "data.removed_key": 1,
    }
    new = {
        **old,
        "output_dir": "b",
        "ckpt": "last",
        "tracking.tracking_uri": "sqlite:///b.db",
        "launcher.partition": "y",
        "data.num_workers": 2,
        "trainer.max_steps": 8,
        "trainer.precision": "bf16-mixed",
        "trainer.tf32": False,
        "eval.max_samples": 8,
        "data.val_sources.1.name": "refcoco",
        "model.lora.rank": 16,
        "data.new_key": 2,
    }
    del new["data.removed_key"]
    changes = fit.recipe_changes(old, new, covered={"model.lora.rank"})
    assert changes == [
        "data.val_sources.1.name: absent -> 'refcoco'",
        "eval.max_samples: None -> 8",
        "trainer.precision: '32-true' -> 'bf16-mixed'",
        "trainer.tf32: True -> False",
    ]
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and "data.new_key, data.removed_key" in note


def test_a_recorded_accumulation_is_no_change_where_the_global_batch_sets_it():
    # a checkpoint written before record_accumulation holds the recipe's 1; this run records the 4 it uses
    old = {"data.global_batch_size": 8, "data.batch_size": 2, "trainer.accumulate_grad_batches": 1}
    assert fit.recipe_changes(old, {**old, "trainer.accumulate_grad_batches": 4}) == []
    assert fit.recipe_changes(old, {**old, "data.global_batch_size": 16, "trainer.accumulate_grad_batches": 8}) == [
        "data.global_batch_size: 8 -> 16"
    ]
    # without a global batch the value is the recipe's own, and a change is one
    plain = {"data.global_batch_size": None, "trainer.accumulate_grad_batches": 1}
    assert fit.recipe_changes(plain, {**plain, "trainer.accumulate_grad_batches": 2}) == [
        "trainer.accumulate_grad_batches: 1 -> 2"
    ]


class _Experiment:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def get_run(self, run_id: str):
        data = type("Data", (), {"tags": dict(self.tags), "params": {}})
        return type("Run", (), {"data": data})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[key] = value


def test_each_resume_adds_its_step_to_the_tag():
    logger = type("Logger", (), {"run_id": "r", "experiment": _Experiment()})()
    assert tracking.append_tag(logger, "pixelqa.resumed_at_step", "10", ",") == "10"
    assert tracking.append_tag(logger, "pixelqa.resumed_at_step", "20", ",") == "10,20"
    long = tracking.append_tag(logger, "t", "x" * 6000, " | ")
    assert len(long) == tracking.TAG_LIMIT and long.startswith("...")
