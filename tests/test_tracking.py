"""MLflow tracking against a real SQLite store: params, metrics with '&', tables, parent/child runs, run id file."""

import csv
import io

import pytest
from mlflow import MlflowClient

from pixelqa import tracking
from pixelqa.config import TrackingConfig


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    # One store for the module: creating an MLflow SQLite schema takes seconds.
    root = tmp_path_factory.mktemp("mlflow")
    return TrackingConfig(
        experiment="t", tracking_uri=f"sqlite:///{root}/mlruns.db", artifact_location=str(root / "art")
    )


def test_uris_are_anchored_in_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, art = tracking.resolve_uris(TrackingConfig())
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert art == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_child_run_of_parent_with_metrics_params_and_tables(cfg, tmp_path):
    parent = tracking.start_parent_run("grid", cfg, params={"grid": "g1"})
    logger = tracking.build_logger(cfg, run_name="cell", parent_run_id=parent)
    tracking.log_recipe_params(logger, {"a.b": 1, "ckpt": "last", "presets.model": "tiny"})
    logger.log_metrics({"val/J&F": 0.25}, step=3)
    rows = [{"task": "res", "J&F": 0.5}, {"task": "all", "J&F": 0.25}]
    csv_path, md_path = tracking.log_table(logger, rows, "table", tmp_path / "tables")
    logger.finalize("success")
    tracking.end_run(parent, cfg)

    client = MlflowClient(tracking.resolve_uris(cfg)[0])
    exp = client.get_experiment_by_name("t")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in children] == [logger.run_id]
    run = children[0]
    assert run.data.params == {"a.b": "1"}  # ckpt / presets are left out (they change on resume)
    assert run.data.metrics == {"val/J_and_F": 0.25}
    assert run.info.status == "FINISHED"
    assert client.get_run(parent).data.params == {"grid": "g1"}
    names = sorted(a.path for a in client.list_artifacts(logger.run_id, "tables"))
    assert names == ["tables/table.csv", "tables/table.md"]
    parsed = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert parsed == [{"task": "res", "J&F": "0.5"}, {"task": "all", "J&F": "0.25"}]
    assert md_path.read_text().splitlines()[2] == "| res | 0.5000 |"


def test_run_id_file_and_resumed_logger_continue_the_run(cfg, tmp_path):
    first = tracking.build_logger(cfg, run_name="r")
    tracking.save_run_id(tmp_path / "ck", first.run_id)
    first.log_metrics({"x": 1.0}, step=1)
    again = tracking.build_logger(cfg, run_id=tracking.load_run_id(tmp_path / "ck"))
    again.log_metrics({"x": 2.0}, step=2)
    client = MlflowClient(tracking.resolve_uris(cfg)[0])
    assert [m.value for m in client.get_metric_history(first.run_id, "x")] == [1.0, 2.0]
    assert tracking.load_run_id(tmp_path / "missing") is None


def test_disabled_tracking_gives_no_logger():
    assert tracking.build_logger(TrackingConfig(enabled=False)) is None


def test_experiment_opens_on_the_training_runs_view(cfg):
    tracking.build_logger(cfg, run_name="kind").finalize("success")
    exp = MlflowClient(tracking.resolve_uris(cfg)[0]).get_experiment_by_name("t")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


CHILD = """
import os, signal, sys
from pixelqa import tracking
from pixelqa.config import TrackingConfig
cfg = TrackingConfig(experiment="race", tracking_uri=sys.argv[1], artifact_location=sys.argv[2])
logger = tracking.build_logger(cfg, run_name="doomed")
logger.log_metrics({"x": 1.0}, step=0)
print(logger.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # killed mid-run: MLflow still says RUNNING
"""


@pytest.mark.slow
def test_concurrent_first_starts_then_killed_runs_are_marked_at_the_next_start(tmp_path):
    import subprocess
    import sys

    uri, art = f"sqlite:///{tmp_path}/fresh.db", str(tmp_path / "art")
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, uri, art], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]  # both create the store's tables and the experiment at once
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [-9, -9], [e.decode()[-2000:] for _, e in outs]
    killed = [o.decode().strip() for o, _ in outs]
    client = MlflowClient(uri)
    assert all(len(r) == 32 for r in killed)
    assert "RUNNING" in {client.get_run(r).info.status for r in killed}  # the last to die was seen by no start yet
    cfg = TrackingConfig(experiment="race", tracking_uri=uri, artifact_location=art)
    alive = tracking.build_logger(cfg, run_name="next start")  # the next start in that store
    assert alive.run_id not in killed
    assert {client.get_run(r).info.status for r in killed} == {"KILLED"}
    assert client.get_run(alive.run_id).info.status == "RUNNING"  # this process is alive: its run is left alone
    alive.finalize("success")
