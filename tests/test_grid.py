"""Ablation grids: parsing, cell expansion, result tables (pixelqa.grid)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from pixelqa.config import RecipeError
from pixelqa.grid import cell_args, cell_id, load_grid, result_table, run_grid

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# a run of a few samples: grid mechanics, not learning
SMALL_RUN = [
    "data.synthetic_train=16",
    "data.synthetic_val=4",
    "data.val_samples=4",
    "data.batch_size=2",
    "trainer.enable_progress_bar=false",
    "tracking.log_overlays=false",
]


def test_every_shipped_experiment_expands_to_valid_recipes(capsys):
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        grid = load_grid(path)
        run_grid(path, dry_run=True)  # raises if any cell's recipe is invalid
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == len(grid.prerequisites) + len(grid.cells())


def test_cells_are_the_cartesian_product_in_file_order(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\nrecipe: stage3\noverrides: [trainer.max_steps=3]\n"
        "grid:\n  model.hidden_tokens: [1, 4]\n  model.prompt_encoder.temporal: [false, true]\n"
    )
    grid = load_grid(path)
    assert grid.cells() == [
        {"model.hidden_tokens": 1, "model.prompt_encoder.temporal": False},
        {"model.hidden_tokens": 1, "model.prompt_encoder.temporal": True},
        {"model.hidden_tokens": 4, "model.prompt_encoder.temporal": False},
        {"model.hidden_tokens": 4, "model.prompt_encoder.temporal": True},
    ]
    args = cell_args(grid, grid.cells()[2], ["seed=3"])
    assert args[:3] == ["recipe=stage3", "trainer.max_steps=3", "seed=3"]
    assert "model.hidden_tokens=4" in args and "model.prompt_encoder.temporal=False" in args
    assert args[-1] == "output_dir=runs/grid/g/model.hidden_tokens=4,model.prompt_encoder.temporal=False"


def test_result_table_has_one_row_per_finished_cell(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ngrid:\n  model.hidden_tokens: [1, 2, 4]\nmetrics: ['val/J&F']\n")
    grid = load_grid(path)
    results = {cell_id({"model.hidden_tokens": 1}): {"val/J&F": 0.25}, cell_id({"model.hidden_tokens": 4}): {}}
    csv_text, md = result_table(grid, results)
    rows = list(csv.reader(io.StringIO(csv_text)))
    assert rows == [["model.hidden_tokens", "val/J&F"], ["1", "0.2500"], ["4", "nan"]]
    assert md.splitlines()[2] == "| 1 | 0.2500 |"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: g\n", "`grid` must map at least one recipe key"),
        ("grid:\n  model.hidden_tokens: 3\n", "grid.model.hidden_tokens must be a non-empty list"),
        ("grid:\n  a: [1]\nsweep: 1\n", "unknown keys ['sweep']"),
    ],
)
def test_bad_grid_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(path)


def test_a_cell_with_an_invalid_key_fails_before_any_work(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: g\ngrid:\n  model.hidden_tokenz: [1, 2]\n")
    with pytest.raises(RecipeError, match="cell model.hidden_tokenz=1: command line: unknown key"):
        run_grid(path, dry_run=True)


@pytest.mark.slow
def test_a_grid_runs_each_cell_as_a_child_run_and_resumes(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\nrecipe: stage3\n"
        "overrides: [data.synthetic_train=16, data.synthetic_val=4, data.val_samples=4, data.batch_size=2,"
        " trainer.max_steps=1, trainer.enable_progress_bar=false, tracking.log_overlays=false]\n"
        "grid:\n  model.hidden_tokens: [1, 2]\nmetrics: ['val/J&F']\n"
    )
    results = run_grid(path)
    assert set(results) == {"model.hidden_tokens=1", "model.hidden_tokens=2"}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("pixelqa")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`pixelqa.grid` = 'g'")
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.params["model.hidden_tokens"] for c in children) == ["1", "2"]
    for child in children:
        cid = f"model.hidden_tokens={child.data.params['model.hidden_tokens']}"
        assert child.data.metrics["val/J_and_F"] == pytest.approx(results[cid]["val/J&F"])
    table = (tmp_path / "runs" / "grid" / "g" / "results.csv").read_text().splitlines()
    assert table[0] == "model.hidden_tokens,val/J&F" and len(table) == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "results.png"} <= artifacts
    # A rerun finds every cell done: no new child runs, the same parent.
    assert run_grid(path) == results
    again = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")
    assert len(again) == 2


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_prerequisites_come_in_dependency_order_and_cells_start_from_the_named_one(tmp_path):
    from pixelqa.grid import fit_specs

    path = _write(
        tmp_path,
        "name: g\nrecipe: stage3\ninit_from: s2\n"
        "prerequisites:\n  s2: {recipe: stage2, init_from: s1}\n  s1: {recipe: stage1, overrides: [seed=5]}\n"
        "grid:\n  seed: [0, 1]\n",
    )
    grid = load_grid(path)
    assert list(grid.prerequisites) == ["s1", "s2"]
    specs = fit_specs(grid, ["trainer.max_steps=2"])
    assert [(s.key, s.needs) for s in specs] == [("s1", []), ("s2", ["s1"]), ("seed=0", ["s2"]), ("seed=1", ["s2"])]
    s2, cell = specs[1].args, specs[3].args
    assert s2[:2] == ["recipe=stage2", "init_from=runs/grid/g/s1/checkpoints/last.ckpt"]
    assert "init_from=runs/grid/g/s2/checkpoints/last.ckpt" in cell and "trainer.max_steps=2" in cell
    assert cell[-2:] == ["tracking.run_name='seed=1'", "output_dir=runs/grid/g/seed=1"]


def test_on_slurm_the_trainer_follows_the_allocation(tmp_path):
    from pixelqa.config import load_recipe
    from pixelqa.grid import fit_specs

    grid = load_grid(_write(tmp_path, "name: g\ngrid:\n  seed: [0]\n"))
    launcher = load_recipe(["launcher=slurm", "launcher.nodes=3", "launcher.gpus_per_node=2"]).launcher
    (spec,) = fit_specs(grid, [], launcher)
    assert spec.args[-3:-1] == ["trainer.num_nodes=3", "trainer.devices=2"]
    recipe = load_recipe(spec.args)
    assert (recipe.trainer.num_nodes, recipe.trainer.devices, recipe.tracking.run_name) == (3, 2, "seed=0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid:\n  seed: [0]\ninit_from: s2\n", "init_from='s2' names no prerequisite"),
        ("grid:\n  seed: [0]\nprerequisites:\n  a: {recipe: stage1, init_from: b}\n", "init_from names no"),
        (
            "grid:\n  seed: [0]\nprerequisites:\n  a: {recipe: stage1, init_from: b}\n"
            "  b: {recipe: stage1, init_from: a}\n",
            "forms a cycle",
        ),
        ("grid:\n  seed: [0]\nprerequisites:\n  a: {overrides: []}\n", "prerequisites.a must be"),
        ("grid:\n  seed: [0]\nprerequisites:\n  a=b: {recipe: stage1}\n", "prerequisite name 'a=b'"),
    ],
)
def test_bad_prerequisites(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_grid(_write(tmp_path, text))


def test_the_cli_ends_a_bad_grid_or_launcher_in_one_line_with_status_2(tmp_path, capsys):
    from pixelqa.grid import main

    path = _write(tmp_path, "grid:\n  seed: [0]\n")
    for argv, message in (
        ([str(path), "launcher=pbs"], "launcher=pbs: no such preset; valid choices: local, slurm, subprocess"),
        ([str(tmp_path / "none.yaml")], "none.yaml does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def _until(predicate, timeout: float, what: str):
    import time

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_a_grid_as_jobs_runs_a_dependency_then_resubmits_a_killed_cell_which_resumes(tmp_path, monkeypatch, capsys):
    """submitit's local executor: a prerequisite and two cells that start from it; one cell is SIGKILLed after
    a checkpoint, --status shows it FAILED, --collect waits for it, a rerun resubmits it alone and it resumes."""
    import os
    import signal

    from mlflow import MlflowClient

    from pixelqa.grid import main
    from pixelqa.launch.status import read_status

    monkeypatch.chdir(tmp_path)
    path = _write(
        tmp_path,
        "name: g\nrecipe: stage3\ninit_from: base\n"
        "prerequisites:\n  base: {recipe: stage3, overrides: [trainer.max_steps=1]}\n"
        "overrides: [trainer.checkpoint_every_n_steps=2]\n"
        "grid:\n  trainer.max_steps: [1, 8]\nmetrics: ['val/J&F']\n",
    )
    common = [f"data.shards={tmp_path / 'shards'}", *SMALL_RUN, "launcher=subprocess"]
    assert run_grid(path, common) == {}  # submitted; the jobs run on
    root = tmp_path / "runs" / "grid" / "g"
    short, long = root / "trainer.max_steps=1", root / "trainer.max_steps=8"
    _until(lambda: any(int(p.stem[4:10]) >= 4 for p in (long / "checkpoints").glob("step*.ckpt")), 600, "step 4")
    status = read_status(long / "job-status.json")
    assert status["state"] == "RUNNING"
    run_id = (long / "checkpoints" / "mlflow_run_id.txt").read_text().strip()
    os.kill(int(status["pid"]), signal.SIGKILL)
    _until(lambda: (s := read_status(short / "job-status.json")) and s["state"] in ("DONE", "FAILED"), 600, "cell 1")
    capsys.readouterr()

    main([str(path), *common, "--status"])
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {"base": "DONE", "trainer.max_steps=1": "DONE", "trainer.max_steps=8": "FAILED"}
    main([str(path), *common, "--collect"])
    assert "1 cell(s) not done yet: trainer.max_steps=8" in capsys.readouterr().out
    assert not (root / "results.csv").exists()

    results = run_grid(path, [*common, "launcher.wait=true"])
    out = capsys.readouterr().out
    assert "submitted trainer.max_steps=8: job" in out and "attempt 2, resumes last.ckpt" in out
    assert "submitted base" not in out and "submitted trainer.max_steps=1" not in out
    assert results["trainer.max_steps=8"]["train/steps"] == 8 and results["trainer.max_steps=1"]["train/steps"] == 1
    assert (root / "results.csv").read_text().splitlines()[0] == "trainer.max_steps,val/J&F"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("pixelqa")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`pixelqa.grid` = 'g'")
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    names = {c.info.run_name: c.info.run_id for c in children}
    assert set(names) == {"base", "trainer.max_steps=1", "trainer.max_steps=8"}  # the killed cell: one run
    assert names["trainer.max_steps=8"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert {"results.csv", "results.md", "results.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_propagation_grid_trains_once_and_evaluates_each_decoding(tmp_path, monkeypatch, capsys):
    """experiments/propagation.yaml: one trained prerequisite, cells that only evaluate it (max_steps=0)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load((EXPERIMENTS / "propagation.yaml").read_text())
    assert spec["overrides"] == ["trainer.max_steps=0"] and spec["init_from"] == "trained"
    spec["prerequisites"]["trained"]["overrides"] = ["trainer.max_steps=2", *SMALL_RUN]
    spec["overrides"] = spec["overrides"] + SMALL_RUN
    path = tmp_path / "propagation.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = run_grid(path)
    fwd = results["model.mask_decoder.propagation=forward"]
    both = results["model.mask_decoder.propagation=bidirectional"]
    assert fwd["train/steps"] == both["train/steps"] == 0  # evaluation only
    # the forward cell evaluates the trained model exactly as the trained run's own final validation did
    trained = (tmp_path / "runs" / "grid" / "propagation" / "trained" / "tables" / "final_metrics.csv").read_text()
    row = next(r for r in csv.DictReader(io.StringIO(trained)) if r["metric"] == "val/J&F")
    assert fwd["val/J&F"] == pytest.approx(float(row["value"]), abs=1e-6)
    assert 0.0 <= both["val/J&F"] <= 1.0
    assert "checkpoint: none written (trainer.max_steps=0" in capsys.readouterr().out  # no step, no checkpoint
