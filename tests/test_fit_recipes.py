"""Every stage recipe runs 2 steps on CPU with tiny settings (as lightning-hydra-template's per-config tests);
stages chain through init_from; the stage-3 run logs to MLflow; evaluate scores its checkpoint."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pixelqa import evaluate, fit
from pixelqa.config import RecipeError


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fit")


def tiny_args(work: Path, stage: int, *extra: str) -> list[str]:
    """Tiny settings shared by every fit test: 2 steps, 32/8 synthetic samples, 4 val samples, no progress bar."""
    return [
        f"recipe=stage{stage}",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=32",
        "data.synthetic_val=8",
        "data.val_samples=8",  # tasks res .. video_qa: segmentation and QA
        "data.batch_size=2",
        "data.val_batch_size=4",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"output_dir={work / 'runs' / f'stage{stage}'}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlruns.db'}",
        f"tracking.artifact_location={work / 'artifacts'}",
        "tracking.num_overlays=2",
        *extra,
    ]


def _check(metrics: dict, work: Path, stage: int) -> None:
    assert metrics["train/steps"] == 2
    assert 0.0 <= metrics["val/J&F"] <= 1.0 and 0.0 <= metrics["val/qa_acc"] <= 1.0
    assert (work / "runs" / f"stage{stage}" / "checkpoints" / "last.ckpt").is_file()


def test_stage1_then_stage2_from_it(work):
    m1 = fit.run(tiny_args(work, 1, "tracking=none"))
    _check(m1, work, 1)
    m2 = fit.run(tiny_args(work, 2, "tracking=none", f"init_from={work / 'runs' / 'stage1'}"))
    _check(m2, work, 2)


def test_stage3_from_stage2_logs_to_mlflow_and_evaluates(work, capsys):
    if not (work / "runs" / "stage2" / "checkpoints" / "last.ckpt").is_file():
        fit.run(tiny_args(work, 2, "tracking=none"))
    init = f"init_from={work / 'runs' / 'stage2' / 'checkpoints' / 'last.ckpt'}"
    metrics = fit.run(tiny_args(work, 3, init))
    _check(metrics, work, 3)
    out = capsys.readouterr().out
    assert "EMBEDDED DEMO" in out and "scale=paper" in out  # says what runs and how to run the paper setting
    summary = out.split("==== PixelQA fit summary ====", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert [line.split(": ")[0] for line in summary[-2:]] == ["val/J&F", "val/qa_acc"]  # the headline last
    assert f"mlflow ui --backend-store-uri sqlite:///{work / 'mlruns.db'}" in out

    run_id = (work / "runs" / "stage3" / "checkpoints" / "mlflow_run_id.txt").read_text().strip()
    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    run = client.get_run(run_id)
    params = run.data.params
    assert (params["stage"], params["trainer.max_steps"], params["data.batch_size"]) == ("3", "2", "2")
    assert run.data.metrics["val/J_and_F"] == pytest.approx(metrics["val/J&F"])
    # J&F again under a name that sorts first (MLflow lists names sorted): byte order and case-insensitive alike
    assert run.data.metrics["0_J_and_F"] == pytest.approx(metrics["val/J&F"])
    assert sorted(run.data.metrics)[0] == sorted(run.data.metrics, key=str.lower)[0] == "0_J_and_F"
    assert len(client.get_metric_history(run_id, "train/loss")) >= 1
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"recipe.yaml", "checkpoints.json", "overlays", "tables"} <= top
    overlays = [a.path for a in client.list_artifacts(run_id, "overlays")]
    files = [f.path for d in overlays for f in client.list_artifacts(run_id, d)]
    assert files and all(f.endswith((".png", ".gif")) for f in files)

    ev = evaluate.run(tiny_args(work, 3, "ckpt=last", "eval.max_samples=8"))
    assert 0.0 <= ev["synthetic/J&F"] <= 1.0 and "synthetic/qa_acc" in ev
    assert (work / "runs" / "stage3" / "eval" / "synthetic" / "synthetic.csv").is_file()


def test_stage_mismatch_of_init_from_fails_before_work(work):
    ckpt = work / "runs" / "stage1" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        pytest.skip("needs the stage-1 checkpoint of test_stage1_then_stage2_from_it")
    with pytest.raises(RecipeError, match="checkpoint of stage 1, but this is stage 3"):
        fit.run(tiny_args(work, 3, f"init_from={ckpt}"))


def test_bf16_mixed_and_gradient_checkpointing_switches(work):
    metrics = fit.run(
        tiny_args(
            work,
            3,
            "tracking=none",
            "trainer.precision=bf16-mixed",
            "model.gradient_checkpointing=true",
            "output_dir=" + str(work / "runs" / "bf16"),
            "eval.after_fit=false",
        )
    )
    assert metrics["train/steps"] == 2 and metrics["train/loss"] == metrics["train/loss"]  # finite, not NaN
    assert (work / "runs" / "bf16" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("tf32", [True, False])
def test_process_settings_set_tf32_and_threads_from_the_recipe(tf32):
    import torch

    from pixelqa.config import TrainerConfig
    from pixelqa.fit import apply_process_settings

    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        apply_process_settings(TrainerConfig(tf32=tf32, cpu_threads=1))
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


def test_trainer_tf32_defaults_on_as_released():
    from pixelqa.config import load_recipe, to_object

    assert to_object(load_recipe(["recipe=stage3", "trainer=gpu"])).trainer.tf32 is True
    assert to_object(load_recipe(["recipe=stage3", "trainer.tf32=false"])).trainer.tf32 is False
