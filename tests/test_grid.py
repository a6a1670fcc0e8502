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
        (
            "grid:\n  seed: [0]\nprerequisites:\n  a: {recipe: stage1, overrides: [output_dir=x]}\n",
            "prerequisites.a.overrides sets output_dir, which the grid chooses",
        ),
        ("grid:\n  output_dir: [a, b]\n", "grid.output_dir cannot be swept"),
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


@pytest.mark.slow(seconds=45)
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


def _argval(args: list[str], key: str) -> str | None:
    """The value the last `key=...` among `args` gives (None when unset)."""
    found = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    return found[-1] if found else None


@pytest.fixture
def fake_fit(monkeypatch):
    """`pixelqa.fit.run` replaced by a stand-in that records its arguments, writes a `last.ckpt` holding its step
    count and reports val/J&F = steps / 100; no MLflow store (grid mechanics, not training)."""
    import pixelqa.fit
    import pixelqa.grid

    calls: list[list[str]] = []

    def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
        calls.append(list(args))
        steps = int(_argval(args, "trainer.max_steps") or 0)
        ckpts = Path(_argval(args, "output_dir")) / "checkpoints"
        if "ckpt=last" not in args and ckpts.is_dir():  # as the real fit does on a fresh start
            pixelqa.fit.set_aside_previous(ckpts)
        ckpts.mkdir(parents=True, exist_ok=True)
        (ckpts / "last.ckpt").write_text(str(steps))
        return {"val/J&F": steps / 100, "train/steps": float(steps)}

    monkeypatch.setattr(pixelqa.fit, "run", run)
    monkeypatch.setattr(pixelqa.grid, "start_parent_run", lambda *a, **k: "parent")
    monkeypatch.setattr(pixelqa.grid, "log_parent_artifact", lambda *a, **k: None)
    monkeypatch.setattr(pixelqa.grid, "end_run", lambda *a, **k: None)
    monkeypatch.setattr(pixelqa.grid, "supersede_runs", lambda *a, **k: [])  # no store behind the "parent" run
    return calls


def test_tracking_none_creates_no_store_and_no_parent_run(tmp_path, monkeypatch, fake_fit):
    import pixelqa.grid

    def refuse(*a, **k):
        raise AssertionError("a parent MLflow run was created with tracking=none")

    monkeypatch.setattr(pixelqa.grid, "start_parent_run", refuse)
    monkeypatch.setattr(pixelqa.grid, "log_parent_artifact", refuse)
    monkeypatch.setattr(pixelqa.grid, "end_run", refuse)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    results = run_grid(path, ["trainer.max_steps=2", "tracking=none"])
    assert sorted(results) == ["seed=0", "seed=1"] and (tmp_path / "runs" / "grid" / "g" / "results.csv").is_file()
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlartifacts").exists()


def test_a_rerun_with_other_settings_reruns_every_cell_afresh(tmp_path, monkeypatch, capsys, fake_fit):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  model.loss.focal: [20.0, 100.0]\nmetrics: ['val/J&F']\n")
    first = run_grid(path, ["trainer.max_steps=3"])
    assert first == {f"model.loss.focal={f}": {"val/J&F": 0.03, "train/steps": 3.0} for f in (20.0, 100.0)}
    assert len(fake_fit) == 2
    # the same settings again: an interrupted or finished grid resumes, nothing runs twice
    assert run_grid(path, ["trainer.max_steps=3"]) == first
    assert len(fake_fit) == 2 and capsys.readouterr().out.count("done before, skipped") == 2

    again = run_grid(path, ["trainer.max_steps=50"])
    out = capsys.readouterr().out
    assert len(fake_fit) == 4 and all(_argval(a, "trainer.max_steps") == "50" for a in fake_fit[2:])
    assert all("ckpt=last" not in a for a in fake_fit[2:])  # a fresh start, not the 3-step run resumed
    assert out.count("settings changed since the stored result (trainer.max_steps 3 -> 50), rerunning") == 2
    assert "done before" not in out
    assert {k: v["val/J&F"] for k, v in again.items()} == {"model.loss.focal=20.0": 0.5, "model.loss.focal=100.0": 0.5}
    cell = tmp_path / "runs" / "grid" / "g" / "model.loss.focal=20.0"
    assert (cell / "checkpoints" / "last.ckpt").read_text() == "50"
    assert (cell / "checkpoints.previous" / "last.ckpt").read_text() == "3"  # the old run's, set aside
    table = (tmp_path / "runs" / "grid" / "g" / "results.csv").read_text().splitlines()
    assert table[1:] == ["20.0,0.5000", "100.0,0.5000"]
    # a launcher choice says where runs run, not what they compute: no rerun
    run_grid(path, ["trainer.max_steps=50", "launcher=local"])
    assert len(fake_fit) == 4


def test_results_of_an_older_state_file_without_settings_are_not_trusted(tmp_path, monkeypatch, capsys, fake_fit):
    import json

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    state = tmp_path / "runs" / "grid" / "g" / "state.json"
    state.parent.mkdir(parents=True)
    old = {"seed=0": {"val/J&F": 0.99}, "seed=1": {"val/J&F": 0.99}}
    state.write_text(json.dumps({"parent_run_id": "parent", "results": old, "jobs": {}}))
    results = run_grid(path, ["trainer.max_steps=2"])
    assert len(fake_fit) == 2 and {v["val/J&F"] for v in results.values()} == {0.02}
    assert capsys.readouterr().out.count("no record of the settings that produced it") == 2


def test_a_changed_prerequisite_reruns_the_cells_that_start_from_it(tmp_path, monkeypatch, capsys, fake_fit):
    monkeypatch.chdir(tmp_path)
    text = "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3, overrides: [trainer.max_steps=STEPS]}\n"
    text += "overrides: [trainer.max_steps=0]\ngrid:\n  seed: [0, 1]\n"
    path = _write(tmp_path, text.replace("STEPS", "1"))
    run_grid(path)
    assert len(fake_fit) == 3
    path.write_text(text.replace("STEPS", "2"))  # the cells' own arguments are unchanged
    run_grid(path)
    out = capsys.readouterr().out
    assert [_argval(a, "tracking.run_name") for a in fake_fit[3:]] == ["'base'", "'seed=0'", "'seed=1'"]
    assert "run 1/3 base: settings changed since the stored result (trainer.max_steps 1 -> 2), rerunning" in out
    assert out.count("(prerequisite base: trainer.max_steps 1 -> 2), rerunning") == 2


class _Killed(BaseException):
    """Stands in for `kill -9`: nothing of the grid runs after it (no handler, no state written)."""


def _kill_once(monkeypatch, calls: list[list[str]], key: str, step: int) -> None:
    """The (fake) fit of run `key`, the first time it starts, writes `step<step>.ckpt` with `last.ckpt` linking to
    it, as the real fit's checkpoint callback does, and is then killed."""
    import pixelqa.fit

    finished = pixelqa.fit.run
    killed: list[str] = []

    def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
        if _argval(args, "tracking.run_name") != f"'{key}'" or killed:
            return finished(args, parent_run_id)
        calls.append(list(args))
        killed.append(key)
        ckpts = Path(_argval(args, "output_dir")) / "checkpoints"
        if "ckpt=last" not in args and ckpts.is_dir():  # as the real fit does on a fresh start
            pixelqa.fit.set_aside_previous(ckpts)
        ckpts.mkdir(parents=True, exist_ok=True)
        (ckpts / f"step{step:06d}.ckpt").write_text(str(step))
        (ckpts / "last.ckpt").symlink_to(f"step{step:06d}.ckpt")
        raise _Killed

    monkeypatch.setattr(pixelqa.fit, "run", run)


def _killed_grid(tmp_path, monkeypatch, fake_fit) -> Path:
    """A 2-cell grid run until the second cell is killed at step 15 (the first is done); returns the grid file."""
    import json

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\nmetrics: ['val/J&F']\n")
    _kill_once(monkeypatch, fake_fit, "seed=1", 15)
    with pytest.raises(_Killed):
        run_grid(path, ["trainer.max_steps=30"])
    assert [_argval(a, "tracking.run_name") for a in fake_fit] == ["'seed=0'", "'seed=1'"]
    state = json.loads((tmp_path / "runs" / "grid" / "g" / "state.json").read_text())
    assert list(state["results"]) == ["seed=0"]
    assert set(state["settings"]) == {"seed=0", "seed=1"}  # the killed run's settings, recorded when it started
    return path


def test_a_local_grid_killed_during_a_cell_resumes_it_from_its_last_checkpoint(tmp_path, monkeypatch, capsys, fake_fit):
    path = _killed_grid(tmp_path, monkeypatch, fake_fit)
    capsys.readouterr()
    results = run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert [_argval(a, "tracking.run_name") for a in fake_fit[2:]] == ["'seed=1'"]  # the done cell is not rerun
    assert "ckpt=last" not in fake_fit[0] and _argval(fake_fit[2], "ckpt") == "last"
    assert "run 1/2 seed=0: done before, skipped" in out
    assert "run 2/2 seed=1: stopped before it finished, resuming from step 15 (ckpt=last)" in out
    cell = tmp_path / "runs" / "grid" / "g" / "seed=1"
    assert not (cell / "checkpoints.previous").exists()  # its checkpoints were continued, not set aside
    assert (cell / "checkpoints" / "step000015.ckpt").read_text() == "30"  # last.ckpt's step file, written on
    assert {k: v["val/J&F"] for k, v in results.items()} == {"seed=0": 0.3, "seed=1": 0.3}


def test_a_killed_cell_with_other_or_unrecorded_settings_starts_afresh(tmp_path, monkeypatch, capsys, fake_fit):
    import json

    path = _killed_grid(tmp_path, monkeypatch, fake_fit)
    capsys.readouterr()
    run_grid(path, ["trainer.max_steps=50"])
    out = capsys.readouterr().out
    assert [_argval(a, "tracking.run_name") for a in fake_fit[2:]] == ["'seed=0'", "'seed=1'"]
    assert all("ckpt=last" not in a for a in fake_fit[2:])  # the 15 steps of a 30-step run are not continued
    assert "seed=1: its checkpoints were made with other settings (trainer.max_steps 30 -> 50), starting afresh" in out
    cell = tmp_path / "runs" / "grid" / "g" / "seed=1"
    assert (cell / "checkpoints.previous" / "step000015.ckpt").read_text() == "15"
    assert (cell / "checkpoints" / "last.ckpt").read_text() == "50"

    # killed again, under a state.json that recorded no settings for it (written by a version before this one)
    fake_fit.clear()
    _kill_once(monkeypatch, fake_fit, "seed=1", 20)
    with pytest.raises(_Killed):
        run_grid(path, ["trainer.max_steps=70"])
    state_file = tmp_path / "runs" / "grid" / "g" / "state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]["seed=1"]
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    run_grid(path, ["trainer.max_steps=70"])
    assert "ckpt=last" not in fake_fit[-1] and _argval(fake_fit[-1], "tracking.run_name") == "'seed=1'"
    out = capsys.readouterr().out
    assert "seed=1: no record of the settings its checkpoints were made with, starting afresh" in out


@pytest.fixture
def recipes_copy(tmp_path, monkeypatch) -> Path:
    """A writable copy of recipes/ that every recipe load reads (PIXELQA_RECIPES), to edit between grid runs."""
    import shutil

    from pixelqa.config import recipes_dir

    root = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), root)
    monkeypatch.setenv("PIXELQA_RECIPES", str(root))
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_edited_recipe_file_reruns_the_cells_naming_the_keys(tmp_path, monkeypatch, capsys, fake_fit, recipes_copy):
    monkeypatch.chdir(tmp_path)
    text = "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3}\ngrid:\n  seed: [0, 1]\n"
    path = _write(tmp_path, text)
    run_grid(path, ["trainer.max_steps=2"])
    assert len(fake_fit) == 3
    capsys.readouterr()
    run_grid(path, ["trainer.max_steps=2"])  # no file edited: every stored result stands
    assert len(fake_fit) == 3 and capsys.readouterr().out.count("done before, skipped") == 3

    # a preset the recipe loads (scale=demo), edited: the same arguments now resolve to another learning rate
    _edit(recipes_copy / "scale" / "demo.yaml", "lr: 3.0e-3", "lr: 1.0e-3")
    run_grid(path, ["trainer.max_steps=2"])
    out = capsys.readouterr().out
    assert len(fake_fit) == 6 and "done before" not in out
    change = "recipe files edited: optim.lr 0.003 -> 0.001"
    assert f"run 1/3 base: settings changed since the stored result ({change}), rerunning" in out
    assert out.count(f"settings changed since the stored result ({change}), rerunning") == 3
    assert (tmp_path / "runs" / "grid" / "g" / "seed=0" / "checkpoints.previous" / "last.ckpt").is_file()

    # the recipe file itself: two keys named, the cells also through their prerequisite
    _edit(recipes_copy / "stage3.yaml", "  lora:\n    enabled: true", "  lora:\n    enabled: false")
    _edit(recipes_copy / "stage3.yaml", "num_frames: 8", "num_frames: 6")  # overridden by scale=demo: no change
    _edit(recipes_copy / "stage3.yaml", "  warmup_ratio: 0.03", "  warmup_ratio: 0.05")
    _edit(recipes_copy / "scale" / "demo.yaml", "  warmup_ratio: 0.03", "")
    run_grid(path, ["trainer.max_steps=2"])
    out = capsys.readouterr().out
    change = "recipe files edited: model.lora.enabled true -> false, optim.warmup_ratio 0.03 -> 0.05"
    assert len(fake_fit) == 9 and f"run 1/3 base: settings changed since the stored result ({change})" in out
    assert "num_frames" not in out


def test_as_jobs_an_edited_recipe_file_is_not_collected_and_is_resubmitted(
    tmp_path, monkeypatch, capsys, fake_jobs, recipes_copy
):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0]\n")
    common = ["launcher=subprocess", "trainer.max_steps=3"]
    run_grid(path, common)
    _as_done(tmp_path / "runs" / "grid" / "g", "seed=0", 3)
    assert run_grid(path, common, action="collect") == {"seed=0": {"val/J&F": 0.03}}
    _edit(recipes_copy / "stage3.yaml", "  lora:\n    enabled: true", "  lora:\n    enabled: false")
    capsys.readouterr()
    assert run_grid(path, common, action="collect") == {}
    assert "(recipe files edited: model.lora.enabled true -> false); submit the grid again" in capsys.readouterr().out
    run_grid(path, common)
    assert fake_jobs == [("seed=0", False), ("seed=0", False)]  # afresh, not a resume of the old settings' run
    assert "(recipe files edited: model.lora.enabled true -> false), submitting it again" in capsys.readouterr().out


def test_a_state_file_without_resolved_recipes_is_kept_on_its_arguments_with_a_note(
    tmp_path, monkeypatch, capsys, fake_fit, recipes_copy
):
    import json

    monkeypatch.chdir(tmp_path)
    text = "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3}\ngrid:\n  seed: [0, 1]\n"
    path = _write(tmp_path, text)
    run_grid(path, ["trainer.max_steps=2"])
    state_file = tmp_path / "runs" / "grid" / "g" / "state.json"
    state = json.loads(state_file.read_text())

    def as_older_version(settings: dict) -> dict:  # args and needs only, as the version before wrote them
        needs = {n: as_older_version(v) for n, v in settings["needs"].items()}
        return {"args": settings["args"], "needs": needs}

    state["settings"] = {k: as_older_version(v) for k, v in state["settings"].items()}
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    # edited before this run: an older state.json cannot tell, so its results are kept as that version kept them
    _edit(recipes_copy / "scale" / "demo.yaml", "lr: 3.0e-3", "lr: 1.0e-3")
    run_grid(path, ["trainer.max_steps=2"])
    out = capsys.readouterr().out
    assert len(fake_fit) == 3 and out.count("done before, skipped") == 3
    assert out.count("note: state.json of an older version records no resolved recipe") == 1
    assert "for 3 run(s) (base, seed=0, seed=1)" in out and "could not be checked" in out
    # the note is said once: the records now hold the recipe, and a later edit is detected
    assert all("recipe" in v for v in json.loads(state_file.read_text())["settings"].values())
    run_grid(path, ["trainer.max_steps=2"])
    assert "note:" not in capsys.readouterr().out and len(fake_fit) == 3
    _edit(recipes_copy / "scale" / "demo.yaml", "lr: 1.0e-3", "lr: 2.0e-3")
    run_grid(path, ["trainer.max_steps=2"])
    assert len(fake_fit) == 6 and "(recipe files edited: optim.lr 0.001 -> 0.002)" in capsys.readouterr().out


@pytest.fixture
def fake_jobs(monkeypatch, fake_fit):
    """Job submission replaced by a record of each submission (key, resume): no job runs."""
    import pixelqa.grid
    import pixelqa.launch.runs

    submitted: list[tuple[str, bool]] = []

    class Executor:
        def __init__(self, name: str) -> None:
            self.name = name

        def submit(self, fn, args, resume=False):
            submitted.append((fn.key, resume))
            return type("Job", (), {"job_id": str(len(submitted))})()

    monkeypatch.setattr(pixelqa.launch.runs, "make_executor", lambda launcher, folder, name, **k: Executor(name))
    monkeypatch.setattr(pixelqa.grid, "_prepare_shards", lambda specs: None)
    return submitted


def _as_done(root: Path, key: str, steps: int) -> None:
    """Leave what a finished job leaves: a DONE status and a last.ckpt."""
    from pixelqa.launch.status import DONE, write_status

    write_status(root / key / "job-status.json", DONE, key=key, metrics={"val/J&F": steps / 100})
    (root / key / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / key / "checkpoints" / "last.ckpt").write_text(str(steps))


def test_as_jobs_a_rerun_with_other_settings_resubmits_done_runs_afresh(tmp_path, monkeypatch, capsys, fake_jobs):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    common = ["launcher=subprocess"]
    run_grid(path, [*common, "trainer.max_steps=3"])
    assert fake_jobs == [("seed=0", False), ("seed=1", False)]
    root = tmp_path / "runs" / "grid" / "g"
    for key in ("seed=0", "seed=1"):
        _as_done(root, key, 3)
    run_grid(path, [*common, "launcher.wait=false", "trainer.max_steps=3"])  # same settings: nothing to do
    assert len(fake_jobs) == 2
    assert run_grid(path, [*common, "trainer.max_steps=3"], action="collect") == {
        "seed=0": {"val/J&F": 0.03},
        "seed=1": {"val/J&F": 0.03},
    }
    capsys.readouterr()
    # --collect with other settings does not take the 3-step results for them
    assert run_grid(path, [*common, "trainer.max_steps=50"], action="collect") == {}
    assert "(trainer.max_steps 3 -> 50); submit the grid again" in capsys.readouterr().out

    run_grid(path, [*common, "trainer.max_steps=50"])
    out = capsys.readouterr().out
    assert fake_jobs[2:] == [("seed=0", False), ("seed=1", False)]  # submitted as new: no resume of last.ckpt
    assert out.count("settings changed since the stored result (trainer.max_steps 3 -> 50), submitting") == 2
    assert not (root / "seed=0" / "checkpoints").exists()
    assert (root / "seed=0" / "checkpoints.previous" / "last.ckpt").read_text() == "3"


def test_as_jobs_a_run_in_flight_with_other_settings_is_not_submitted_twice(tmp_path, monkeypatch, fake_jobs):
    import pixelqa.launch.runs
    from pixelqa.grid import GridError

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0]\n")
    run_grid(path, ["launcher=subprocess", "trainer.max_steps=3"])
    monkeypatch.setattr(pixelqa.launch.runs, "scheduler_state", lambda *a: "RUNNING")
    with pytest.raises(GridError, match=r"run seed=0: job 1 is RUNNING with other settings .*3 -> 50.*cancel it"):
        run_grid(path, ["launcher=subprocess", "trainer.max_steps=50"])
    assert len(fake_jobs) == 1


def test_options_may_come_among_the_overrides(tmp_path, capsys):
    from pixelqa.grid import main

    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    main([str(path), "--dry-run", "trainer.max_steps=7"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(_argval(line.split(), "trainer.max_steps") == "7" for line in lines)


def test_an_output_dir_moves_the_whole_grid(tmp_path, monkeypatch, capsys, fake_fit):
    monkeypatch.chdir(tmp_path)
    path = _write(
        tmp_path,
        "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3}\ngrid:\n  seed: [0]\n",
    )
    elsewhere = tmp_path / "scratch"
    run_grid(path, [f"output_dir={elsewhere}"], dry_run=True)
    base, cell = (line.split() for line in capsys.readouterr().out.splitlines())
    assert [a for a in base if a.startswith("output_dir=")] == [f"output_dir={elsewhere}/g/base"]
    assert [a for a in cell if a.startswith("output_dir=")] == [f"output_dir={elsewhere}/g/seed=0"]
    assert f"init_from={elsewhere}/g/base/checkpoints/last.ckpt" in cell
    run_grid(path, [f"output_dir={elsewhere}", "trainer.max_steps=1"])
    assert (elsewhere / "g" / "state.json").is_file() and (elsewhere / "g" / "results.csv").is_file()
    assert (elsewhere / "g" / "seed=0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
    # the grid file's overrides may set it too
    path.write_text(path.read_text() + f"overrides: [output_dir={tmp_path / 'other'}]\n")
    assert load_grid(path).root == str(tmp_path / "other")


@pytest.fixture
def mlflow_fit(monkeypatch):
    """`pixelqa.fit.run` replaced by a stand-in that leaves what the real fit leaves in MLflow: a child run of the
    grid's parent named by the run, its val/J&F (steps / 100) and its run id beside the checkpoints; a run with
    trainer.max_steps=13 fails after its MLflow run started (a crash mid-training)."""
    import pixelqa.fit
    from pixelqa import tracking
    from pixelqa.config import TrackingConfig

    def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
        steps = int(_argval(args, "trainer.max_steps") or 0)
        ckpts = Path(_argval(args, "output_dir")) / "checkpoints"
        if "ckpt=last" not in args:
            pixelqa.fit.set_aside_previous(ckpts)
        name = _argval(args, "tracking.run_name").strip("'")
        logger = tracking.build_logger(TrackingConfig(), run_name=name, parent_run_id=parent_run_id)
        tracking.save_run_id(ckpts, logger.run_id)
        if steps == 13:
            raise RuntimeError("training crashed")
        (ckpts / "last.ckpt").write_text(str(steps))
        logger.log_metrics({"val/J&F": steps / 100})
        logger.finalize("success")
        return {"val/J&F": steps / 100}

    monkeypatch.setattr(pixelqa.fit, "run", run)


def _children(tmp_path, include_superseded=False):
    import json

    from pixelqa import tracking
    from pixelqa.config import TrackingConfig

    parent = json.loads((tmp_path / "runs" / "grid" / "g" / "state.json").read_text())["parent_run_id"]
    runs = tracking.child_runs(TrackingConfig(), parent, include_superseded=include_superseded)
    return sorted(runs, key=lambda r: r.info.start_time)


def test_a_rerun_with_other_settings_supersedes_the_old_child_runs(tmp_path, monkeypatch, capsys, mlflow_fit):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    run_grid(path, ["trainer.max_steps=3"])
    old = {r.info.run_name: r for r in _children(tmp_path)}
    assert sorted(old) == ["seed=0", "seed=1"]

    run_grid(path, ["trainer.max_steps=50"])
    current = _children(tmp_path)  # what a table of the grid's cells reads: one run per cell, the new settings
    assert sorted(r.info.run_name for r in current) == ["seed=0", "seed=1"]
    assert {r.data.metrics["val/J_and_F"] for r in current} == {0.5} and not set(old) & {r.info.run_id for r in current}
    every = _children(tmp_path, include_superseded=True)
    assert len(every) == 4
    new_ids = {r.info.run_name: r.info.run_id for r in current}
    for run in every:
        if run.info.run_id == old[run.info.run_name].info.run_id:
            tags = run.data.tags
            assert tags["pixelqa.superseded"] == "true" and tags["pixelqa.superseded_by"] == new_ids[run.info.run_name]
            assert "trainer.max_steps 3 -> 50" in tags["pixelqa.superseded_reason"]
            assert run.info.status == "FINISHED"  # its result stands for its own settings
    assert capsys.readouterr().out.count("tagged superseded") == 2

    # a rerun that crashes (each cell; the grid goes on after the first): the 50-step runs are superseded at once,
    # not shown beside the crashed ones
    from pixelqa.grid import FailedRunsError

    with pytest.raises(FailedRunsError, match=re.escape("2 of 2 run(s) FAILED: seed=0, seed=1")):
        run_grid(path, ["trainer.max_steps=13"])
    shown = {r.info.run_name: r for r in _children(tmp_path)}
    assert sorted(shown) == ["seed=0", "seed=1"] and not set(new_ids.values()) & {r.info.run_id for r in shown.values()}
    assert all("val/J_and_F" not in r.data.metrics and r.info.status == "FAILED" for r in shown.values())
    for key in ("seed=0", "seed=1"):
        fifty = next(r for r in _children(tmp_path, include_superseded=True) if r.info.run_id == new_ids[key])
        assert fifty.data.tags["pixelqa.superseded"] == "true" and "pixelqa.superseded_by" not in fifty.data.tags


def test_as_jobs_a_failed_run_resubmitted_with_other_settings_is_superseded(tmp_path, monkeypatch, fake_jobs):
    import json

    from mlflow import MlflowClient

    from pixelqa import tracking
    from pixelqa.config import TrackingConfig
    from pixelqa.launch.status import FAILED, write_status

    monkeypatch.setattr("pixelqa.grid.supersede_runs", tracking.supersede_runs)  # fake_fit stubs it: a real store
    monkeypatch.setattr("pixelqa.grid.start_parent_run", tracking.start_parent_run)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0]\n")
    common = ["launcher=subprocess", "launcher.wait=false"]
    run_grid(path, [*common, "trainer.max_steps=3"])
    root = tmp_path / "runs" / "grid" / "g"
    parent = json.loads((root / "state.json").read_text())["parent_run_id"]

    def job_logs(steps: int) -> str:
        """What the job's fit leaves: a child run (RUNNING until it ends) and its id beside the checkpoints."""
        logger = tracking.build_logger(TrackingConfig(), run_name="seed=0", parent_run_id=parent)
        tracking.save_run_id(root / "seed=0" / "checkpoints", logger.run_id)
        return logger.run_id

    failed = job_logs(3)  # the job died: its run is left RUNNING, its status FAILED
    write_status(root / "seed=0" / "job-status.json", FAILED, key="seed=0", error="killed")
    run_grid(path, [*common, "trainer.max_steps=50"])
    assert fake_jobs == [("seed=0", False), ("seed=0", False)]  # submitted afresh
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    old = client.get_run(failed)
    assert old.info.status == "KILLED" and old.data.tags["pixelqa.superseded"] == "true"
    assert "trainer.max_steps 3 -> 50" in old.data.tags["pixelqa.superseded_reason"]
    assert tracking.child_runs(TrackingConfig(), parent) == []

    fresh = job_logs(50)
    _as_done(root, "seed=0", 50)
    run_grid(path, [*common, "trainer.max_steps=50"], action="collect")
    assert client.get_run(failed).data.tags["pixelqa.superseded_by"] == fresh
    assert [r.info.run_id for r in tracking.child_runs(TrackingConfig(), parent)] == [fresh]


def test_slurm_without_its_commands_fails_in_one_line_before_any_state(tmp_path, capsys, monkeypatch):
    from pixelqa.grid import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # neither sbatch nor srun
    path = _write(tmp_path, "grid:\n  seed: [0]\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "launcher=slurm", "tracking=none", f"data.shards={tmp_path / 'shards'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "launcher=slurm: sbatch and srun not found on PATH" in err and "launcher=subprocess" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]  # no state.json, shards, nor mlruns.db


def test_the_runs_of_a_grid_carry_no_launcher_arguments(tmp_path, capsys):
    from pixelqa.grid import fit_specs, load_grid, main

    path = _write(tmp_path, "overrides: [launcher.poll_s=1]\ngrid:\n  seed: [0, 1]\n")
    main([str(path), "--dry-run", "launcher=subprocess", "launcher.time_min=5"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all("launcher" not in line for line in printed)  # pixelqa.fit would refuse them
    assert all("launcher" not in " ".join(s.args) for s in fit_specs(load_grid(path), ["launcher=slurm"]))
