"""A local grid whose runs raise (a NaN, out of memory): the failure is recorded and the grid goes on (pixelqa.grid)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pixelqa.grid import FailedRunsError, run_grid

SMALL_RUN = [  # a real fit of a few samples: grid mechanics, not learning (as tests/test_grid.py)
    "data.synthetic_train=16",
    "data.synthetic_val=4",
    "data.val_samples=4",
    "data.batch_size=2",
    "trainer.enable_progress_bar=false",
    "tracking.log_overlays=false",
]


def _argval(args: list[str], key: str) -> str | None:
    """The value the last `key=...` among `args` gives (None when unset)."""
    found = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    return found[-1] if found else None


def _name(args: list[str]) -> str:
    return _argval(args, "tracking.run_name").strip("'")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def _state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "grid" / "g" / "state.json").read_text())


@pytest.fixture
def fake_fit(monkeypatch):
    """`pixelqa.fit.run` replaced by a stand-in that records its arguments, writes `step<N>.ckpt` (N = max_steps) with
    `last.ckpt` linking to it, and reports val/J&F = steps / 100. `fails[run name]`: an exception the run raises
    instead of reporting, once, after a checkpoint at step 15 (`fails_at` to change). The parent run is a stand-in;
    `ended` records the status each `end_run` closes a run with."""
    import pixelqa.fit
    import pixelqa.grid

    calls: list[list[str]] = []
    fails: dict[str, BaseException] = {}
    ended: list[tuple[str, str]] = []

    def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
        calls.append(list(args))
        name = _name(args)
        err = fails.pop(name, None)
        steps = 15 if err is not None else int(_argval(args, "trainer.max_steps") or 0)
        ckpts = Path(_argval(args, "output_dir")) / "checkpoints"
        if "ckpt=last" not in args and ckpts.is_dir():  # as the real fit does on a fresh start
            pixelqa.fit.set_aside_previous(ckpts)
        ckpts.mkdir(parents=True, exist_ok=True)
        (ckpts / f"step{steps:06d}.ckpt").write_text(str(steps))
        (ckpts / "last.ckpt").unlink(missing_ok=True)
        (ckpts / "last.ckpt").symlink_to(f"step{steps:06d}.ckpt")
        if err is not None:
            raise err
        return {"val/J&F": steps / 100}

    monkeypatch.setattr(pixelqa.fit, "run", run)
    monkeypatch.setattr(pixelqa.grid, "start_parent_run", lambda *a, **k: "parent")
    monkeypatch.setattr(pixelqa.grid, "log_parent_artifact", lambda *a, **k: None)
    monkeypatch.setattr(
        pixelqa.grid, "end_run", lambda run_id, tracking, status="FINISHED": ended.append((run_id, status))
    )
    monkeypatch.setattr(pixelqa.grid, "supersede_runs", lambda *a, **k: [])  # no store behind the "parent" run
    return calls, fails, ended


GRID = "name: g\ngrid:\n  seed: [0, 1, 2]\nmetrics: ['val/J&F']\n"


def test_a_run_that_raises_is_recorded_as_failed_and_the_grid_goes_on(tmp_path, monkeypatch, capsys, fake_fit):
    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=1"] = RuntimeError("loss is NaN\n  at step 15")
    with pytest.raises(FailedRunsError) as raised:
        run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls] == ["seed=0", "seed=1", "seed=2"]  # the cell after the failed one ran
    log = "runs/grid/g/seed=1/failure.log"
    assert f"[grid g] run 2/3 seed=1: FAILED (RuntimeError: loss is NaN at step 15); traceback in {log}\n" in out
    assert raised.value.failed == {"seed=1": "RuntimeError: loss is NaN at step 15"}
    assert raised.value.results == {"seed=0": {"val/J&F": 0.3}, "seed=2": {"val/J&F": 0.3}}
    assert str(raised.value).startswith("[grid g] 1 of 3 run(s) FAILED: seed=1 (")

    state = _state(tmp_path)
    error = "RuntimeError: loss is NaN at step 15"
    assert state["failed"] == {"seed=1": {"error": error, "type": "builtins.RuntimeError", "log": log}}
    assert sorted(state["results"]) == ["seed=0", "seed=2"] and "seed=1" in state["settings"]
    trace = (tmp_path / log).read_text()
    assert trace.startswith("[grid g] seed=1: python -m pixelqa.fit recipe=stage3 ")
    assert "Traceback (most recent call last):" in trace and trace.endswith("RuntimeError: loss is NaN\n  at step 15\n")

    root = tmp_path / "runs" / "grid" / "g"
    assert (root / "results.csv").read_text().splitlines() == [
        "seed,val/J&F,status",
        "0,0.3000,done",
        "1,,FAILED",
        "2,0.3000,done",
    ]
    md = (root / "results.md").read_text()
    assert "| 1 | - | FAILED |" in md
    assert md.endswith(
        f"Failed runs (run the grid again to retry them):\n- seed=1: {state['failed']['seed=1']['error']}"
        f" (traceback in {log})\n"
    )
    assert ended == [("parent", "FAILED")]


def test_a_rerun_retries_the_failed_run_from_its_last_checkpoint_and_skips_the_done_ones(
    tmp_path, monkeypatch, capsys, fake_fit
):
    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=1"] = ValueError("CUDA out of memory")
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=30"])
    capsys.readouterr()

    results = run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls[3:]] == ["seed=1"] and _argval(calls[3], "ckpt") == "last"
    assert "run 1/3 seed=0: done before, skipped" in out and "run 3/3 seed=2: done before, skipped" in out
    assert "run 2/3 seed=1: failed before (ValueError: CUDA out of memory), resuming from step 15 (ckpt=last)" in out
    assert results == {f"seed={s}": {"val/J&F": 0.3} for s in range(3)}
    state = _state(tmp_path)
    assert state["failed"] == {} and sorted(state["results"]) == ["seed=0", "seed=1", "seed=2"]
    root = tmp_path / "runs" / "grid" / "g"
    assert not (root / "seed=1" / "failure.log").exists()  # the failure it told of is over
    assert (root / "results.csv").read_text().splitlines()[0] == "seed,val/J&F"  # no status column: none failed
    assert ended == [("parent", "FAILED"), ("parent", "FINISHED")]

    # retried with other settings, a failed run's checkpoint (made with the old ones) is not resumed: it starts afresh
    fails["seed=0"] = RuntimeError("boom")
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=40"])
    capsys.readouterr()
    run_grid(path, ["trainer.max_steps=50"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls[-3:]] == ["seed=0", "seed=1", "seed=2"] and "ckpt=last" not in calls[-3]
    assert "seed=0: its checkpoints were made with other settings (trainer.max_steps 40 -> 50), starting afresh" in out


NAN_STOP = (
    "training stopped at optimizer step 15: train/loss is nan (the step objective is not finite); learning rates at "
    "this step: lm 0.01; start again with lower learning rates"
)


def test_a_run_stopped_at_a_nan_step_is_not_retried_with_the_same_settings(tmp_path, monkeypatch, capsys, fake_fit):
    """Every random draw is seeded from the seed and the step: a retry would replay to the same NaN at the same step.
    The cell stays failed until its settings change; then it starts afresh."""
    from pixelqa.train.finite import NonFiniteStepError

    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=1"] = NonFiniteStepError(NAN_STOP)
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=30"])
    capsys.readouterr()
    failure = _state(tmp_path)["failed"]["seed=1"]
    assert failure["type"] == "pixelqa.train.finite.NonFiniteStepError"
    assert failure["error"] == f"NonFiniteStepError: {NAN_STOP}"

    with pytest.raises(FailedRunsError) as raised:  # the same settings: nothing runs, it is still failed
        run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert len(calls) == 3  # no fourth fit: seed=0 and seed=2 done, seed=1 not retried
    assert (
        f"[grid g] run 2/3 seed=1: stopped at a NaN/inf step before (NonFiniteStepError: {NAN_STOP}); not retried "
        "with the same settings: change them for this cell (e.g. optim.lr) and run the grid again\n"
    ) in out
    assert raised.value.failed == {"seed=1": f"NonFiniteStepError: {NAN_STOP}"}
    assert str(raised.value).endswith(
        "run the grid again to retry them (seed=1 stopped at a NaN/inf step: change its settings first)"
    )
    assert _state(tmp_path)["failed"] == {"seed=1": failure}
    root = tmp_path / "runs" / "grid" / "g"
    assert (root / "results.csv").read_text().splitlines()[2] == "1,,FAILED"
    assert ended == [("parent", "FAILED"), ("parent", "FAILED")]
    assert (root / "seed=1" / "checkpoints" / "last.ckpt").is_file()  # kept, for init_from= of an earlier step

    # other settings: every cell runs again from scratch (its old checkpoints set aside), and this time it finishes
    results = run_grid(path, ["trainer.max_steps=30", "optim.lr=0.0001"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls[3:]] == ["seed=0", "seed=1", "seed=2"] and "ckpt=last" not in calls[4]
    assert "seed=1: its checkpoints were made with other settings (optim.lr unset -> 0.0001), starting afresh" in out
    assert results == {f"seed={s}": {"val/J&F": 0.3} for s in range(3)} and _state(tmp_path)["failed"] == {}


def test_a_prerequisite_stopped_at_a_nan_step_keeps_its_cells_not_run(tmp_path, monkeypatch, capsys, fake_fit):
    from pixelqa.train.finite import NonFiniteStepError

    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3}\ngrid:\n  seed: [0]\n")
    fails["base"] = NonFiniteStepError(NAN_STOP)
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=30"])
    with pytest.raises(FailedRunsError, match=re.escape("2 of 2 run(s) FAILED: base, seed=0")):
        run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls] == ["base"]
    assert "run 1/2 base: stopped at a NaN/inf step before (" in out
    assert "run 2/2 seed=0: not run, its prerequisite base failed" in out


@pytest.mark.parametrize(
    "hardware",
    [["trainer.devices=2", "trainer.strategy=ddp"], ["trainer.devices=2"], ["trainer.num_nodes=2"]],
    ids=["ddp", "devices", "nodes"],
)
def test_a_local_grid_refuses_runs_of_several_processes(tmp_path, monkeypatch, capsys, fake_fit, hardware):
    """Lightning starts each extra rank by running the command again (here the whole grid, whose lock it then
    finds taken; Lightning kills every process when that rank exits): refused before any work, one line, status 2."""
    from pixelqa.grid import main

    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "trainer.accelerator=cpu", *hardware])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and calls == [] and not (tmp_path / "runs").exists()
    assert len(err) == 1 and err[0].startswith("grid error: grid g, cell seed=0: trainer.devices=")
    assert "starts 2 processes, but launcher=local runs each run inside the grid's own process" in err[0]
    assert "use launcher=subprocess (this machine) or launcher=slurm" in err[0]
    run_grid(path, ["trainer.accelerator=cpu", *hardware, "launcher=subprocess"], dry_run=True)  # a job each: fine


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(1)], ids=["ctrl-c", "exit"])
def test_ctrl_c_or_an_exit_in_a_run_still_stops_the_grid_at_once(tmp_path, monkeypatch, capsys, fake_fit, stop):
    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=1"] = stop
    with pytest.raises(type(stop)):
        run_grid(path, ["trainer.max_steps=30"])
    assert [_name(a) for a in calls] == ["seed=0", "seed=1"] and ended == []  # nothing after it, no table
    assert _state(tmp_path)["failed"] == {} and "FAILED" not in capsys.readouterr().out
    assert not (tmp_path / "runs" / "grid" / "g" / "results.csv").exists()
    run_grid(path, ["trainer.max_steps=30"])  # a rerun resumes it, as after a kill
    assert _argval(calls[2], "ckpt") == "last" and [_name(a) for a in calls[2:]] == ["seed=1", "seed=2"]


def test_status_shows_a_failed_local_run_as_failed(tmp_path, monkeypatch, capsys, fake_fit):
    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=2"] = RuntimeError("loss is NaN")
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=30"])
    capsys.readouterr()
    run_grid(path, ["trainer.max_steps=30"], action="status")
    lines = capsys.readouterr().out.splitlines()
    states = {r.split("|")[1].strip(): r.split("|")[4].strip() for r in lines[2:5]}
    assert states == {"seed=0": "DONE", "seed=1": "DONE", "seed=2": "FAILED"}
    log = "runs/grid/g/seed=2/failure.log"
    assert lines[5:] == [f"[grid g] seed=2: FAILED (RuntimeError: loss is NaN); traceback in {log}"]


def test_a_failed_prerequisite_leaves_its_cells_not_run(tmp_path, monkeypatch, capsys, fake_fit):
    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    text = "name: g\ninit_from: base\nprerequisites:\n  base: {recipe: stage3}\ngrid:\n  seed: [0, 1]\n"
    path = _write(tmp_path, text)
    fails["base"] = RuntimeError("loss is NaN")
    with pytest.raises(FailedRunsError, match=re.escape("3 of 3 run(s) FAILED: base, seed=0, seed=1")):
        run_grid(path, ["trainer.max_steps=30"])
    out = capsys.readouterr().out
    assert [_name(a) for a in calls] == ["base"]  # its cells would start from a checkpoint never written
    assert "[grid g] run 2/3 seed=0: not run, its prerequisite base failed" in out
    assert _state(tmp_path)["failed"]["seed=1"] == {"error": "not run: prerequisite base failed"}
    assert "- seed=0: not run: prerequisite base failed\n" in out  # the table's list of failed runs
    assert run_grid(path, ["trainer.max_steps=30"]) == {"seed=0": {"val/J&F": 0.3}, "seed=1": {"val/J&F": 0.3}}
    assert [_name(a) for a in calls[1:]] == ["base", "seed=0", "seed=1"]


def test_the_command_ends_with_status_1_and_one_line_naming_the_failed_runs(tmp_path, monkeypatch, capsys, fake_fit):
    from pixelqa.grid import main

    calls, fails, ended = fake_fit
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, GRID)
    fails["seed=0"] = RuntimeError("loss is NaN")
    fails["seed=2"] = MemoryError()
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "trainer.max_steps=30"])
    assert exit_info.value.code == 1 and len(calls) == 3
    captured = capsys.readouterr()
    assert "run 3/3 seed=2: FAILED (MemoryError); traceback in runs/grid/g/seed=2/failure.log" in captured.out
    err = captured.err.strip().splitlines()
    assert err[-1] == (
        "[grid g] 2 of 3 run(s) FAILED: seed=0, seed=2 (errors above, tracebacks in each run's failure.log); "
        "run the grid again to retry them"
    )
    main([str(path), "trainer.max_steps=30"])  # both retried and done: no exit status but 0
    assert [_name(a) for a in calls[3:]] == ["seed=0", "seed=2"]


def test_a_crash_that_leaves_its_mlflow_run_running_ends_it_failed(tmp_path, monkeypatch, capsys):
    """An error raised around training (e.g. the generation pass after fit) is not Lightning's to close: the grid
    ends the cell's MLflow run FAILED, and the parent run too."""
    from mlflow import MlflowClient

    import pixelqa.fit
    from pixelqa import tracking
    from pixelqa.config import TrackingConfig

    def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
        logger = tracking.build_logger(TrackingConfig(), run_name=_name(args), parent_run_id=parent_run_id)
        tracking.save_run_id(Path(_argval(args, "output_dir")) / "checkpoints", logger.run_id)
        if _name(args) == "seed=0":
            raise RuntimeError("generation crashed")  # no logger.finalize: the run is left RUNNING
        logger.finalize("success")
        return {"val/J&F": 0.5}

    monkeypatch.setattr(pixelqa.fit, "run", run)
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [0, 1]\n")
    with pytest.raises(FailedRunsError):
        run_grid(path, ["trainer.max_steps=1"])
    parent = _state(tmp_path)["parent_run_id"]
    statuses = {r.info.run_name: r.info.status for r in tracking.child_runs(TrackingConfig(), parent)}
    assert statuses == {"seed=0": "FAILED", "seed=1": "FINISHED"}
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(parent).info.status == "FAILED"


@pytest.mark.slow
def test_a_real_fit_that_crashes_in_training_fails_alone_and_its_mlflow_run_ends_failed(tmp_path, monkeypatch, capsys):
    """Real tiny fits: the cell whose training step raises ends its MLflow run FAILED itself (Lightning, not the
    grid's safety net), the next cell trains in the same process, and a rerun retries the failed cell."""
    from mlflow import MlflowClient

    import pixelqa.grid
    from pixelqa import tracking
    from pixelqa.config import TrackingConfig
    from pixelqa.train.module import UniPixelModule

    step = UniPixelModule.training_step

    def training_step(self, batch, batch_idx):
        if self.hparams.seed == 1:
            raise RuntimeError("loss is NaN")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(UniPixelModule, "training_step", training_step)
    monkeypatch.setattr(pixelqa.grid, "_close_failed_run", lambda tracking, spec: None)  # fit's own marking only
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "name: g\ngrid:\n  seed: [1, 2]\nmetrics: ['val/J&F']\n")
    common = [*SMALL_RUN, "trainer.max_steps=1"]
    with pytest.raises(FailedRunsError) as raised:
        run_grid(path, common)
    assert raised.value.failed == {"seed=1": "RuntimeError: loss is NaN"} and list(raised.value.results) == ["seed=2"]
    parent = _state(tmp_path)["parent_run_id"]
    runs = {r.info.run_name: r for r in tracking.child_runs(TrackingConfig(), parent)}
    assert runs["seed=1"].info.status == "FAILED" and runs["seed=2"].info.status == "FINISHED"
    assert "val/J_and_F" in runs["seed=2"].data.metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(parent).info.status == "FAILED"

    monkeypatch.setattr(UniPixelModule, "training_step", step)
    results = run_grid(path, common)
    assert sorted(results) == ["seed=1", "seed=2"] and client.get_run(parent).info.status == "FINISHED"
    shown = {r.info.run_name: r.info.status for r in tracking.child_runs(TrackingConfig(), parent)}
    assert shown == {"seed=1": "FINISHED", "seed=2": "FINISHED"}  # the crashed attempt is superseded by the retry
