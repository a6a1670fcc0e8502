"""Training settings a run cannot use end in one line naming the key, the value and what is expected (exit status
2), before the model is built or any file is written: bounds the schedule, numpy's seeding and Lightning's
validation interval need, precisions that cannot run, an accumulation the global batch overrides, and a resume that
changes the trained parameter set. Values that can run get past these checks, and what the run records holds the
accumulation it used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from pixelqa import fit
from pixelqa.config import RecipeError
from pixelqa.train.schedule import warmup_steps

STORE = "mlruns.db"


@pytest.fixture
def no_model(monkeypatch):
    """Building the network would be 'work': make it impossible, so a case passes only by failing earlier."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the recipe error was found")

    monkeypatch.setattr("pixelqa.model.unipixel.UniPixel.__init__", refuse)


def _base_args(work: Path, out: Path) -> list[str]:
    return [f"data.shards={work / 'shards'}", f"output_dir={out}", "tracking=none"]


def _cli_error(capsys, args: list[str]) -> str:
    """The stderr of `python -m pixelqa.fit ARGS`, checked to be exit status 2 with one line and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        fit.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("recipe error: ") and "Traceback" not in err, err
    return err.removeprefix("recipe error: ").rstrip("\n")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["optim.warmup_ratio=1.0"], "optim.warmup_ratio=1.0 is out of range; expected a fraction in [0, 1)"),
        (["seed=-1"], "seed=-1 is out of range; expected an integer from 0 to 2**32 - 1 = 4294967295"),
        (["seed=4294967296"], "seed=4294967296 is out of range; expected an integer from 0 to 2**32 - 1"),
        (
            ["trainer.val_check_interval=0.5"],  # Lightning's fraction of an epoch: ZeroDivisionError mid-run before
            "trainer.val_check_interval=0.5: expected null (validate once, at the end of the run) or an integer >= 1 "
            "(optimizer steps between validations)",
        ),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: expected null (validate once, at the end"),
        (["trainer.val_check_interval=2.0"], "trainer.val_check_interval=2.0: expected null"),
        (["trainer.val_check_interval=true"], "trainer.val_check_interval=True: expected null"),
        (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is not supported: it casts the whole model"),
        (
            ["trainer.precision=16-mixed", "trainer.accelerator=cpu"],
            "trainer.precision=16-mixed with trainer.accelerator=cpu: float16 autocast needs a GPU, and on a CPU "
            "Lightning would run bf16-mixed instead; use trainer.precision=bf16-mixed",
        ),
        (
            # the demo's data.batch_size is 4: 8 / (4 x 1 process) = 2 micro-batches per step, not 3
            ["data.global_batch_size=8", "trainer.accumulate_grad_batches=3"],
            "trainer.accumulate_grad_batches=3 disagrees with data.global_batch_size=8, which wins: it accumulates 2 "
            "(= 8 / (data.batch_size 4 x 1 processes)); drop trainer.accumulate_grad_batches, or set "
            "data.global_batch_size=null to accumulate 3",
        ),
    ],
)
def test_settings_a_run_cannot_use_are_one_line_before_any_work(tmp_path, capsys, no_model, args, expected):
    err = _cli_error(capsys, [*_base_args(tmp_path, tmp_path / "run"), *args])
    assert err.startswith(expected), err
    assert list(tmp_path.iterdir()) == []  # no shard built, no output folder, no recipe.yaml


def test_bf16_true_is_refused_with_the_advice_of_the_runtime_error(tmp_path, capsys, no_model):
    err = _cli_error(capsys, [*_base_args(tmp_path, tmp_path / "run"), "trainer.precision=bf16-true"])
    assert "model.dtype=bfloat16" in err and "trainer.precision=bf16-mixed" in err


def test_16_mixed_is_refused_where_auto_finds_no_gpu(tmp_path, capsys, no_model, monkeypatch):
    from pixelqa.preflight import runs_on_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runs_on_cpu("auto") and runs_on_cpu("cpu") and not runs_on_cpu("gpu") and not runs_on_cpu("cuda")
    args = [*_base_args(tmp_path, tmp_path / "run"), "trainer.precision=16-mixed", "trainer.accelerator=auto"]
    said = _cli_error(capsys, args)
    assert said.startswith("trainer.precision=16-mixed with trainer.accelerator=auto (no GPU found)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not runs_on_cpu("auto")


@pytest.mark.parametrize(
    "args",
    [
        ["optim.warmup_ratio=0.99"],
        ["optim.warmup_ratio=0"],
        ["seed=0"],
        ["seed=4294967295"],
        ["trainer.val_check_interval=1"],
        ["trainer.val_check_interval=null"],
        ["trainer.precision=bf16-mixed"],
        ["data.global_batch_size=8"],  # the default accumulate_grad_batches (1): the global batch decides
        ["data.global_batch_size=8", "trainer.accumulate_grad_batches=2"],  # the same accumulation, said twice
    ],
)
def test_values_a_run_can_use_pass_every_check(tmp_path, no_model, args):
    with pytest.raises(AssertionError, match="model was built"):  # past every recipe and preflight check
        fit.run([*_base_args(tmp_path, tmp_path / "run"), *args])


@pytest.mark.parametrize("ratio", [0.0, 0.03, 0.5, 0.99, 1.0])
def test_the_recipe_check_and_the_schedule_agree_on_the_warmup_bound(ratio):
    from pixelqa.config import load_recipe

    try:
        warmup_steps(100, ratio)
        schedule_takes = True
    except ValueError:
        schedule_takes = False
    try:
        load_recipe([f"optim.warmup_ratio={ratio}"])
        checker_takes = True
    except RecipeError:
        checker_takes = False
    assert checker_takes == schedule_takes == (ratio < 1.0)


def test_a_worker_error_without_usable_samples_stays_one_line():
    """torch rebuilds a DataLoader worker's error from a message with the worker's traceback in front."""
    from torch._utils import ExceptionWrapper

    from pixelqa.train.datamodule import NoUsableSampleError

    said = "batch 0: no usable sample in 4 slots after 10 redraws each"
    try:
        raise NoUsableSampleError(said)
    except NoUsableSampleError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(NoUsableSampleError) as err:
        wrapped.reraise()
    assert str(err.value) == said and isinstance(err.value, RecipeError)


def _run_args(work: Path, out: Path, *extra: str) -> list[str]:
    return [
        "recipe=stage3",
        f"data.shards={work / 'shards'}",
        "data.synthetic_train=16",
        "data.synthetic_val=4",
        "data.val_samples=4",
        "data.batch_size=2",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.enable_progress_bar=false",
        "tracking.num_overlays=0",
        "eval.after_fit=false",
        f"output_dir={out}",
        f"tracking.tracking_uri=sqlite:///{work / STORE}",
        f"tracking.artifact_location={work / 'artifacts'}",
        *extra,
    ]


BAD_TOKENS = ("trainer.max_steps=2", "data.max_tokens=40", "data.num_workers=1")


def test_no_usable_sample_is_one_line_exit_2(tmp_path, capsys):
    """data.max_tokens=40 leaves no sample a token to learn from: found at the first batch (a worker's), one line."""
    with pytest.raises(SystemExit) as exc:
        fit.main(_run_args(tmp_path, tmp_path / "run", *BAD_TOKENS))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("recipe error: ")]
    assert line.startswith("recipe error: batch 0: no usable sample in 2 slots after 10 redraws each")
    assert line.endswith("check the pixel budgets and data.max_tokens")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 2-step stage-3 demo run (LoRA on, extra_trainable [lm_head, language_model.norm], extra_groups []) whose
    global batch 4 of 2-sample batches accumulates 2 micro-batches per step; its checkpoint at step 2."""
    work = tmp_path_factory.mktemp("settings_checks")
    fit.run(_run_args(work, work / "run", "trainer.max_steps=2", "data.global_batch_size=4"))
    return work


def test_the_recorded_recipe_holds_the_accumulation_used(base):
    recipe = yaml.safe_load((base / "run" / "recipe.yaml").read_text())
    assert recipe["data"]["global_batch_size"] == 4 and recipe["trainer"]["accumulate_grad_batches"] == 2
    ckpt = torch.load(base / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["pixelqa_recipe"]["trainer.accumulate_grad_batches"] == 2 == ckpt["hyper_parameters"]["accumulate"]
    client = MlflowClient(f"sqlite:///{base / STORE}")
    (run,) = client.search_runs([client.get_experiment_by_name("pixelqa").experiment_id])
    assert run.data.params["trainer.accumulate_grad_batches"] == "2"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("model.lora.enabled=false", "model.lora.enabled changed (True -> False)"),
        ("model.lora.rank=8", "model.lora.rank changed (32 -> 8)"),  # the demo's rank: LoRA weights of another shape
        ("optim.extra_groups=[embeddings]", "optim.extra_groups changed ([] -> ['embeddings'])"),
        ("optim.extra_trainable=[]", "optim.extra_trainable changed (['lm_head', 'language_model.norm'] -> [])"),
        ("optim.backbone_lr=1e-4", "optim.backbone_lr changed (None -> 0.0001)"),  # LoRA moves to its own group
    ],
)
def test_a_resume_that_changes_the_trained_set_is_one_line_before_any_work(base, capsys, no_model, change, said):
    run = base / "run"  # `base` (module scope) is set up before `no_model` refuses to build models
    before = sorted(p.name for p in run.rglob("*"))
    args = _run_args(base, run, "trainer.max_steps=4", "data.global_batch_size=4", change, "ckpt=last")
    err = _cli_error(capsys, args)
    step = (run / "checkpoints" / "last.ckpt").resolve()
    assert err == (
        f"ckpt=last: {said}, which changes the trained parameters (or the optimizer's groups) that a resume "
        f"restores; set it back to resume, or start a new run from these weights with init_from={step} and another "
        "output_dir"
    )
    assert sorted(p.name for p in run.rglob("*")) == before  # no recipe.resumed-step*.yaml, nothing else either


def test_a_resume_with_the_same_trained_set_goes_on(base, tmp_path):
    """The extra names in another order and another LoRA alpha train the same parameters: the resume runs."""
    import shutil

    shutil.copytree(base / "run", tmp_path / "run", symlinks=True)
    shutil.copy(base / STORE, tmp_path / STORE)
    args = _run_args(base, tmp_path / "run", "trainer.max_steps=3", "data.global_batch_size=4", "ckpt=last")
    args = [a for a in args if not a.startswith("tracking.tracking_uri=")] + [
        f"tracking.tracking_uri=sqlite:///{tmp_path / STORE}",
        "optim.extra_trainable=[language_model.norm,lm_head]",
        "model.lora.alpha=16",
    ]
    metrics = fit.run(args)
    assert metrics["train/steps"] == 3
    assert (tmp_path / "run" / "recipe.resumed-step000002.yaml").is_file()


def test_trained_set_changes_compare_what_decides_the_set():
    saved = {
        "stage": 3,
        "model.lora.enabled": False,
        "model.lora.rank": 32,
        "optim.extra_trainable": ["a", "b"],
        "optim.extra_groups": [],
        "optim.backbone_lr": 1e-5,
    }
    same = {**saved, "model.lora.rank": 8, "optim.extra_trainable": ["b", "a"], "optim.backbone_lr": 2e-5}
    assert fit.trained_set_changes(saved, same) == []  # LoRA off on both sides: its rank builds nothing
    assert fit.trained_set_changes(saved, {**saved, "stage": 2}) == ["stage changed (3 -> 2)"]
    assert fit.trained_set_changes(saved, {**saved, "optim.backbone_lr": None}) == [
        "optim.backbone_lr changed (1e-05 -> None)"
    ]
    assert fit.trained_set_changes({"stage": 3}, saved) == []  # keys an earlier version did not record


def test_a_checkpoint_without_a_recorded_recipe_is_compared_by_its_hyperparameters(tmp_path, capsys, no_model):
    """A checkpoint of an earlier version records its module's hyperparameters (model, optim, stage) only."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    hparams = {
        "model": {"lora": {"enabled": True, "rank": 32, "vit": True, "llm": True}},
        "optim": {"extra_trainable": ["lm_head", "language_model.norm"], "extra_groups": [], "backbone_lr": None},
        "stage": 3,
    }
    torch.save({"hyper_parameters": hparams, "pixelqa_stage": 3, "global_step": 2}, out / "checkpoints" / "last.ckpt")
    err = _cli_error(capsys, [*_base_args(tmp_path, out), "optim.extra_groups=[embeddings]", "ckpt=last"])
    assert err.startswith("ckpt=last: optim.extra_groups changed ([] -> ['embeddings']), which changes")
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "last.ckpt"]
