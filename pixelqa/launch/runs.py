"""Submit a set of `pixelqa.fit` runs with dependencies as jobs; report, resubmit and collect them.

A run is a `FitSpec` (key, fit arguments, output folder, keys it needs). `submit_runs` submits, in order, every
run that is neither done nor in flight: a run that failed or never ran is (re)submitted, with SLURM `afterok`
dependencies on needed runs that are still in flight; a resubmitted run resumes from its `last.ckpt`. The job
records (`jobs`: key -> job id, attempt, ...) are the caller's to store; each job's outcome is in its status file
(`<output_dir>/job-status.json`), so nothing is lost when the submitting process ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelqa.launch.executor import ACTIVE_STATES, make_executor, scheduler_state
from pixelqa.launch.status import DONE, FAILED, REQUEUED, died, read_status

STATUS_FILE = "job-status.json"
NOT_RUN = "NOT RUN"


@dataclass
class FitSpec:
    """One run of a grid: its key (cell id or prerequisite name), `pixelqa.fit` arguments and dependencies."""

    key: str
    args: list[str]
    output_dir: str
    needs: list[str] = field(default_factory=list)

    @property
    def status_path(self) -> Path:
        """The job's status file."""
        return Path(self.output_dir) / STATUS_FILE


def run_state(spec: FitSpec, job: Mapping[str, Any] | None, launcher: Any, folder: str | Path) -> str:
    """DONE, FAILED, NOT RUN, or the scheduler's state of a job in flight (PENDING, RUNNING, ..., UNKNOWN)."""
    status = read_status(spec.status_path)
    if status is not None and status.get("state") == DONE:
        return DONE
    if job is None:
        return NOT_RUN if status is None else FAILED  # a status without a job record: an earlier, lost submission
    if status is not None and status.get("state") == FAILED or died(status):
        return FAILED
    state = scheduler_state(launcher, folder, str(job["job_id"]))
    if state in ACTIVE_STATES or state == "UNKNOWN":
        if state == "RUNNING" and status is not None and status.get("state") == REQUEUED:
            return REQUEUED
        return state
    return FAILED  # the job ended without recording DONE: killed, out of memory, node failure, ...


def in_flight(state: str) -> bool:
    """Whether a run's job is queued or running (or the scheduler cannot tell: never submit it twice)."""
    return state in ACTIVE_STATES or state in ("UNKNOWN", REQUEUED)


def submit_runs(
    specs: list[FitSpec],
    jobs: MutableMapping[str, dict],
    launcher: Any,
    folder: str | Path,
    parent_run_id: str | None,
    job_name: str,
    on_submit: Callable[[], None] | None = None,
    before_resubmit: Callable[[FitSpec], None] | None = None,
) -> list[str]:
    """Submit every run that failed or never ran (in order, dependencies first); returns the submitted keys.

    `jobs` gets one record per submission (`on_submit` is called after each, to store it); `before_resubmit`
    sees each run that is submitted again (e.g. to close its dead MLflow run when it cannot resume).
    """
    from pixelqa.launch.fit_job import FitJob, last_checkpoint

    keys = {s.key for s in specs}
    states = {s.key: run_state(s, jobs.get(s.key), launcher, folder) for s in specs}
    by_key = {s.key: s for s in specs}
    submitted: list[str] = []
    for spec in specs:
        unknown = [n for n in spec.needs if n not in keys]
        if unknown:
            raise ValueError(f"run {spec.key}: needs {unknown}, which are not runs of this grid ({sorted(keys)})")
        if states[spec.key] == DONE or in_flight(states[spec.key]):
            continue
        waiting = [n for n in spec.needs if states[n] != DONE]
        dependencies = [str(jobs[n]["job_id"]) for n in waiting]
        resume = spec.key in jobs and last_checkpoint(spec.args).is_file()
        if spec.key in jobs and before_resubmit is not None:
            before_resubmit(spec)
        executor = make_executor(launcher, folder, f"{job_name}:{spec.key}", dependencies=dependencies or None)
        fn = FitJob(
            spec.key,
            Path.cwd(),
            spec.status_path,
            parent_run_id=parent_run_id,
            needs={n: str(by_key[n].status_path) for n in waiting},
            poll_s=float(launcher.poll_s),
        )
        spec.status_path.unlink(missing_ok=True)  # a stale FAILED must not outlive the new submission
        job = executor.submit(fn, list(spec.args), resume=resume)
        attempt = int(jobs.get(spec.key, {}).get("attempt", 0)) + 1
        jobs[spec.key] = {"job_id": str(job.job_id), "attempt": attempt, "resume": resume, "submitted": time.time()}
        states[spec.key] = "PENDING"
        submitted.append(spec.key)
        if on_submit is not None:
            on_submit()
        print(f"submitted {spec.key}: job {job.job_id} (attempt {attempt}{', resumes last.ckpt' if resume else ''})")
    return submitted


def wait_runs(specs: list[FitSpec], jobs: Mapping[str, dict], launcher: Any, folder: str | Path) -> dict[str, str]:
    """Block until no run is in flight; returns key -> final state."""
    while True:
        states = {s.key: run_state(s, jobs.get(s.key), launcher, folder) for s in specs}
        if not any(in_flight(st) for st in states.values()):
            return states
        time.sleep(float(launcher.poll_s))


def run_results(specs: list[FitSpec]) -> dict[str, dict[str, float]]:
    """key -> final metrics of every run whose status says DONE."""
    out = {}
    for spec in specs:
        status = read_status(spec.status_path)
        if status is not None and status.get("state") == DONE:
            out[spec.key] = {k: float(v) for k, v in status.get("metrics", {}).items()}
    return out


def last_logged_metric(spec: FitSpec, tracking: Any, names: list[str]) -> str:
    """`name=value` of the first of `names` the run's MLflow run has logged ('-' when none, or no run yet)."""
    from pixelqa.tracking import load_run_id, mlflow_key, resolve_uris

    status = read_status(spec.status_path) or {}
    metrics = status.get("metrics") or {}
    if not metrics:
        run_id = load_run_id(Path(spec.output_dir) / "checkpoints")
        if run_id is None or not getattr(tracking, "enabled", True):
            return "-"
        from mlflow import MlflowClient

        try:
            logged = MlflowClient(tracking_uri=resolve_uris(tracking)[0]).get_run(run_id).data.metrics
        except Exception:  # the tracking server is unreachable from here: the table still prints  # noqa: BLE001
            return "-"
        metrics = {name: logged[mlflow_key(name)] for name in names if mlflow_key(name) in logged}
    for name in names:
        if name in metrics:
            return f"{name}={metrics[name]:.4f}"
    return "-"


def status_table(
    specs: list[FitSpec], jobs: Mapping[str, dict], launcher: Any, folder: str | Path, tracking: Any, names: list[str]
) -> list[dict[str, str]]:
    """One row per run: key, job id, attempt, state, last metric."""
    rows = []
    for spec in specs:
        job = jobs.get(spec.key)
        rows.append(
            {
                "run": spec.key,
                "job": str(job["job_id"]) if job else "-",
                "attempt": str(job["attempt"]) if job else "0",
                "state": run_state(spec, job, launcher, folder),
                "last metric": last_logged_metric(spec, tracking, names),
            }
        )
    return rows
