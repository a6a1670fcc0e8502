"""Ablation grids: parsing, cell expansion, result tables (pixelqa.grid)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from pixelqa.config import RecipeError
from pixelqa.grid import cell_args, cell_id, load_grid, result_table, run_grid

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_shipped_experiment_expands_to_valid_recipes(capsys):
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        grid = load_grid(path)
        run_grid(path, dry_run=True)  # raises if any cell's recipe is invalid
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == len(grid.cells())


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
