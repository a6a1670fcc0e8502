"""The notebooks run top to bottom (nbclient) and show what they promise."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """Run a notebook in `cwd` with extra environment variables; return all its printed output."""
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
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(
                o.get("text", "") if o.get("output_type") == "stream" else str(o.get("data", {}).get("text/plain", ""))
            )
    return "".join(out)


def test_ablation_dashboard_tabulates_grid_children(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("abl", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp, run_name="grid:hidden-tokens", tags={"pixelqa.grid": "hidden-tokens"})
    client.log_param(parent.info.run_id, "grid.model.hidden_tokens", "[1, 2]")
    for tokens, jf in ((2, 0.625), (1, 0.3125)):
        child = client.create_run(exp, run_name=f"cell{tokens}", tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_param(child.info.run_id, "model.hidden_tokens", str(tokens))
        client.log_metric(child.info.run_id, "val/J_and_F", jf)
    unrelated = client.create_run(exp, run_name="plain-fit")
    client.log_metric(unrelated.info.run_id, "val/J_and_F", 0.99)
    text = execute("ablation_dashboard.ipynb", tmp_path, {"PIXELQA_TRACKING_URI": uri, "PIXELQA_EXPERIMENT": "abl"})
    assert "== grid hidden-tokens ==" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [(r[0], r[1]) for r in rows] == [("1", "0.3125"), ("2", "0.6250")]
    assert "0.99" not in text  # a run outside any grid is not a cell
    assert (tmp_path / "dashboard-hidden-tokens.png").stat().st_size > 1000


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    path = NOTEBOOKS / "quickstart.ipynb"
    if not path.exists():
        pytest.fail("notebooks/quickstart.ipynb is missing")
    text = execute("quickstart.ipynb", tmp_path, {"PIXELQA_QUICKSTART_DIR": str(tmp_path)})
    lines = {line.split(":")[0]: line for line in text.splitlines() if ":" in line}
    assert lines["memory bank objects"].endswith("[1]")  # round 1 pre-filled the bank from the point prompt
    # Round 2 injects one <MEM> per frame where [2] is visible: every frame of the synthetic track.
    frames = int(re.search(r"rvos video \((\d+), 112, 112, 3\)", text).group(1))
    assert lines["<MEM> tokens in round 2"] == (
        f"<MEM> tokens in round 2: {frames} | visible frames of [2]: {list(range(frames))}"
    )
    assert "[2]: <1> <MEM>" in text
    assert (tmp_path / "sample.gif").stat().st_size > 0 and (tmp_path / "chat.gif").stat().st_size > 0
