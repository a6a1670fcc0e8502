"""The notebooks run top to bottom (nbclient) and show what they promise."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import nbformat
import pytest
from nbclient import NotebookClient

from pixelqa.grid import run_grid
from pixelqa.prompt_format import MEM

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> nbformat.NotebookNode:
    """Run a notebook in `cwd` with extra environment variables; return it with its outputs."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything an executed notebook shows as text: streams, plain-text and Markdown results."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            out.append(o.get("text", "") if o.get("output_type") == "stream" else str(data.get("text/markdown", "")))
            out.append("" if "text/markdown" in data else str(data.get("text/plain", "")))
    return "".join(out)


def execute(name: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """Run a notebook in `cwd` with extra environment variables; return all its printed output."""
    return printed(run_notebook(name, cwd, env, timeout))


@pytest.mark.slow
def test_ablation_dashboard_on_a_real_grid(tmp_path, monkeypatch):
    """A real 2-cell grid (pixelqa.grid, tiny steps), then the dashboard on its MLflow store: one table row per cell
    with the values the cells returned, the paper-style table, and the plot; a run outside the grid is ignored."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: tiny-grid\nrecipe: stage3\n"
        "overrides: [data.synthetic_train=16, data.synthetic_val=8, data.val_samples=8, data.batch_size=2,"
        " trainer.max_steps=1, trainer.enable_progress_bar=false, tracking.log_overlays=false]\n"
        "grid:\n  model.hidden_tokens: [1, 2]\nmetrics: ['val/J&F', 'val/qa_acc']\n"
    )
    results = run_grid(path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pixelqa")
    unrelated = client.create_run(exp.experiment_id, run_name="plain-fit")
    client.log_metric(unrelated.info.run_id, "val/J_and_F", 0.987654)

    nb = run_notebook(
        "ablation_dashboard.ipynb", tmp_path, {"PIXELQA_TRACKING_URI": uri, "PIXELQA_EXPERIMENT": "pixelqa"}
    )
    text = printed(nb)
    lines = text.splitlines()
    at = lines.index("== grid tiny-grid: 2 cells ==")
    header, rows = lines[at + 1].split(), [line.split() for line in lines[at + 2 : at + 4]]
    assert header[:3] == ["model.hidden_tokens", "J&F", "J"]
    for tokens, row in zip((1, 2), rows):  # one row per cell in grid order, J&F as the cell's fit returned it
        assert row[:2] == [str(tokens), f"{results[f'model.hidden_tokens={tokens}']['val/J&F']:.4f}"]
    paper = [line for line in lines if line.startswith("| ")]
    assert [c.strip() for c in paper[0].split("|")[1:-1]] == ["model.hidden_tokens", "J", "F", "J&F", "Acc"]
    jfs = [100 * results[f"model.hidden_tokens={t}"]["val/J&F"] for t in (1, 2)]
    for tokens, jf, line in zip((1, 2), jfs, paper[1:]):
        cells = [c.strip() for c in line.split("|")[1:-1]]
        bold = f"{jf:.1f}" == f"{max(jfs):.1f}"  # the best as shown: a tie after rounding is bold in both rows
        assert cells[0] == str(tokens) and cells[3] == (f"**{jf:.1f}**" if bold else f"{jf:.1f}")
    assert "0.9877" not in text and "98.8" not in text  # a run outside any grid is not a cell
    assert (tmp_path / "dashboard-tiny-grid.png").stat().st_size > 5000
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the plot renders in the notebook too


def test_ablation_dashboard_bolds_ties_as_shown_and_adds_free_generation_when_logged(tmp_path):
    """Two cells whose J&F differ only below the shown decimal are both bold; `val/gen/*` metrics get their own
    columns and paper-style table in the grid that logged them, and none in a grid that did not."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("pixelqa")
    grids = {
        "gen-grid": {
            "a": {"val/J_and_F": 0.13421, "val/J": 0.5, "val/gen/J_and_F": 0.2},
            "b": {"val/J_and_F": 0.13389},
        },
        "tf-grid": {"a": {"val/J_and_F": 0.3}, "b": {"val/J_and_F": 0.1}},
    }
    for grid, cells in grids.items():
        parent = client.create_run(exp, run_name=grid, tags={"pixelqa.grid": grid})
        client.log_param(parent.info.run_id, "grid.model.memory.pooling", '["a", "b"]')
        for value, metrics in cells.items():
            tags = {"mlflow.parentRunId": parent.info.run_id}
            child = client.create_run(exp, run_name=f"model.memory.pooling={value}", tags=tags)
            client.log_param(child.info.run_id, "model.memory.pooling", value)
            for key, v in metrics.items():
                client.log_metric(child.info.run_id, key, v)
            client.set_terminated(child.info.run_id)
    text = execute("ablation_dashboard.ipynb", tmp_path, {"PIXELQA_TRACKING_URI": uri}, timeout=300)
    shown = text[text.index("**gen-grid**\n\n|") :].split("**tf-grid**")[0]  # its Markdown as displayed
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in shown.splitlines() if ln.startswith("| ")]
    assert rows[0] == ["model.memory.pooling", "J", "J&F"]
    assert rows[1] == ["a", "**50.0**", "**13.4**"] and rows[2] == ["b", "-", "**13.4**"]  # 13.421 and 13.389
    assert rows[3] == ["model.memory.pooling", "gen/J&F"] and rows[4] == ["a", "**20.0**"] and rows[5] == ["b", "-"]
    assert "free generation (`val/gen/*`)" in shown
    tables = (tmp_path / "dashboard-gen-grid.md").read_text()
    assert tables.strip() in text  # the file holds what the notebook shows
    plain = (tmp_path / "dashboard-tf-grid.md").read_text()
    assert "gen/" not in plain and "| a | **30.0** |" in plain and "| b | 10.0 |" in plain
    header = next(ln for ln in text.splitlines() if ln.split()[:1] == ["model.memory.pooling"] and "gen/J&F" in ln)
    assert header.split()[:4] == ["model.memory.pooling", "J&F", "J", "F"]


def test_ablation_dashboard_on_a_missing_store_says_so_and_creates_nothing(tmp_path):
    text = execute("ablation_dashboard.ipynb", tmp_path, {"PIXELQA_TRACKING_URI": "sqlite:///missing.db"}, timeout=300)
    said = [line for line in text.splitlines() if line.startswith(("no ", "store: "))]  # not library warnings
    assert len(said) == 1 and said[0].startswith(f"no MLflow store at {tmp_path / 'missing.db'}: set PIXELQA_"), said
    assert list(tmp_path.iterdir()) == []  # MLflow would have made an empty missing.db


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    path = NOTEBOOKS / "quickstart.ipynb"
    if not path.exists():
        pytest.fail("notebooks/quickstart.ipynb is missing")
    text = execute("quickstart.ipynb", tmp_path, {"PIXELQA_QUICKSTART_DIR": str(tmp_path)})
    lines = {line.split(":")[0]: line for line in text.splitlines() if ":" in line}
    assert lines["memory bank objects"].endswith("[0]")  # round 1 pre-filled the bank from the point prompt (id 0)
    # Round 2 injects one MEM token per frame pair where [2] is visible: every frame of the synthetic track.
    frames = int(re.search(r"rvos video \((\d+), 112, 112, 3\)", text).group(1))
    pairs = (frames + 1) // 2
    assert lines[f"{MEM} tokens in round 2"] == (
        f"{MEM} tokens in round 2: {pairs} | visible frames of [2]: {list(range(frames))}"
    )
    assert f"[2]: <1>-<2> {MEM}" in text
    assert (tmp_path / "sample.gif").stat().st_size > 0 and (tmp_path / "chat.gif").stat().st_size > 0
