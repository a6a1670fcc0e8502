"""What checkpoints record and what a resume checks: paper checkpoint cadence, the newest k kept with last.ckpt a
link, the data-stream fingerprint (refused without --allow-stream-change), the base model's reference; the
DeepSpeed / FSDP strategy configurations and DeepSpeed checkpoint directories."""

from pathlib import Path

import pytest
import torch

from pixelqa import fit
from pixelqa.config import load_recipe, to_object
from pixelqa.train.callbacks import checkpoint_interval
from pixelqa.train.guards import base_reference, stream_changes, stream_fingerprint
from pixelqa.train.module import read_checkpoint
from pixelqa.train.strategies import build_strategy, model_dtype_for, strategy_spec


def _recipe(*args: str):
    return to_object(load_recipe(list(args)))


@pytest.mark.parametrize("stage,every", [(1, 500), (2, 500), (3, 1000)])
def test_paper_checkpoint_cadence_per_stage(stage, every):
    assert checkpoint_interval(_recipe(f"recipe=stage{stage}", "scale=paper")) == every
    assert (
        checkpoint_interval(_recipe(f"recipe=stage{stage}", "scale=paper", "trainer.checkpoint_every_n_steps=7")) == 7
    )
    assert checkpoint_interval(_recipe(f"recipe=stage{stage}", "trainer.max_steps=500")) == 100  # demo: a fifth
    assert _recipe(f"recipe=stage{stage}", "scale=paper").trainer.keep_checkpoints == 3


def test_stream_fingerprint_names_what_changed():
    a = stream_fingerprint(_recipe("recipe=stage3", "scale=paper", "data=sft1m"), world=8, accumulate=4)
    assert a["global_batch"] == 32 and a["world_size"] == 8 and a["sources"][0] == "osprey_conversation/trainx5"
    b = stream_fingerprint(_recipe("recipe=stage3", "scale=paper", "data=sft1m", "seed=1"), world=4, accumulate=8)
    assert stream_changes(a, b) == ["seed: 0 -> 1", "world_size: 8 -> 4"]  # same global batch of 32
    assert stream_changes(a, a) == [] and stream_changes(None, a) == []


def test_base_reference_hashes_the_config(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    ref = base_reference(_recipe("recipe=stage3", "model=unipixel-3b", f"model.path={tmp_path}").model)
    # sha256 of the bytes {"a": 1}, from coreutils sha256sum
    assert ref["config_sha256"] == "f9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310"
    assert ref["preset"] == "unipixel-3b" and ref["path"] == str(tmp_path)


def test_resume_on_another_stream_is_refused_unless_allowed(tmp_path, capsys):
    base = [
        "recipe=stage3",
        f"data.shards={tmp_path / 'shards'}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "tracking=none",
        "eval.after_fit=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    fit.run(base)
    ckpts = tmp_path / "run" / "checkpoints"
    # one file per save: the newest 2 step files, last.ckpt a link to the newest
    assert sorted(p.name for p in ckpts.glob("step*.ckpt")) == ["step000001.ckpt", "step000002.ckpt"]
    assert (ckpts / "last.ckpt").is_symlink() and (ckpts / "last.ckpt").resolve().name == "step000002.ckpt"
    saved = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["pixelqa_stream"]["global_batch"] == 2 and saved["pixelqa_base"]["preset"] == "tiny"
    assert "pixelqa_data_counts" in saved

    changed = [a for a in base if not a.startswith("data.batch_size")] + ["data.batch_size=1", "trainer.max_steps=3"]
    with pytest.raises(SystemExit) as err:
        fit.main([*changed, "ckpt=last"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "batch_size: 2 -> 1" in message and "global_batch: 2 -> 1" in message and "--allow-stream-change" in message
    metrics = fit.run([*changed, "ckpt=last", "--allow-stream-change"])
    assert metrics["train/steps"] == 3
    said = capsys.readouterr().out
    assert "resuming on a changed data stream" in said and "resuming with changed settings: total_steps: 2 -> 3" in said


def test_a_longer_resume_continues_its_mlflow_run(tmp_path, capsys):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    base = [
        "recipe=stage3",
        f"data.shards={tmp_path / 'shards'}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        f"tracking.tracking_uri={store}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}",
        "tracking.num_overlays=0",
        "eval.after_fit=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    fit.run([*base, "trainer.max_steps=2"])
    # train further: MLflow refused Lightning's second copy of the hyperparameters (total_steps 2 -> 4), failing the
    # finished run; now the run continues, its params as first logged, the change in a tag
    metrics = fit.run([*base, "trainer.max_steps=4", "ckpt=last"])
    assert metrics["train/steps"] == 4 and "total_steps: 2 -> 4" in capsys.readouterr().out
    (run,) = MlflowClient(store).search_runs(MlflowClient(store).search_experiments()[0].experiment_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_steps"] == "2"
    assert "total_steps: 2 -> 4" in run.data.tags["pixelqa.resumed_with"]
    trained, total = int(run.data.params["params/trainable"]), int(run.data.params["params/total"])
    assert 0 < trained < total  # the demo trains LoRA, the new modules, SAM's decoder: not the frozen base


def test_deepspeed_and_fsdp_configurations():
    kind, kwargs = strategy_spec(_recipe("recipe=stage3", "trainer=deepspeed", "data.batch_size=2"))
    assert kind == "deepspeed" and kwargs == {
        "stage": 2,
        "logging_batch_size_per_gpu": 2,
        "exclude_frozen_parameters": True,
    }
    fsdp = _recipe("recipe=stage3", "trainer=fsdp", "model=unipixel-7b")
    kind, kwargs = strategy_spec(fsdp)
    assert kind == "fsdp" and kwargs["use_orig_params"] and kwargs["sharding_strategy"] == "FULL_SHARD"
    assert {p.rsplit(".", 1)[1] for p in kwargs["auto_wrap_policy"]} == {
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VLVisionBlock",
        "MultiScaleBlock",
        "TwoWayAttentionBlock",
    }
    assert model_dtype_for(fsdp) == "float32" and fsdp.model.dtype == "bfloat16"
    strategy = build_strategy(fsdp)  # builds on CPU: the wrap classes import, the mixed precision is bf16 / fp32
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.mixed_precision.reduce_dtype == torch.float32
    assert build_strategy(_recipe("recipe=stage3", "trainer=ddp")) == "ddp"


def test_deepspeed_checkpoint_directory_reads_as_a_lightning_checkpoint(tmp_path):
    # the layout DeepSpeed's save_checkpoint writes under Lightning (tag "checkpoint"; client state beside "module")
    folder = tmp_path / "step000010.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    weights = {"_forward_module.model.l2m.0.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(
        {"module": weights, "optimizer": None, "global_step": 10, "pixelqa_stage": 2, "pixelqa_stream": {"seed": 0}},
        folder / "checkpoint" / "mp_rank_00_model_states.pt",
    )
    ckpt = read_checkpoint(folder)
    assert ckpt["pixelqa_stage"] == 2 and ckpt["global_step"] == 10
    assert list(ckpt["state_dict"]) == ["model.l2m.0.weight"]
    assert torch.equal(ckpt["state_dict"]["model.l2m.0.weight"], torch.arange(6.0).reshape(2, 3))
    from pixelqa.train.guards import read_resume_metadata

    assert read_resume_metadata(folder)["pixelqa_stream"] == {"seed": 0}
    (tmp_path / "last.ckpt").symlink_to(folder.name)  # ckpt=last through the link
    recipe = _recipe("recipe=stage3", f"output_dir={tmp_path.parent}", f"ckpt={tmp_path / 'last.ckpt'}")
    assert fit.resolve_ckpt(recipe) == Path(tmp_path / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="no checkpoint/mp_rank_00_model_states.pt"):
        read_checkpoint(_empty_ds_dir(tmp_path))


def _empty_ds_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    (folder / "checkpoint").mkdir(parents=True)
    return folder
