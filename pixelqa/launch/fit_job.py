"""One `pixelqa.fit` run as a submitit job: waits for the runs it starts from, trains, records its status.

The job is `submitit.helpers.Checkpointable`: when SLURM preempts it or its time limit nears (USR2), submitit
calls `checkpoint`, which resubmits the same run with `resume=True`, and the requeued job continues from the
run's `last.ckpt` (`ckpt=last`: same weights, data position and MLflow run). A job resubmitted after a crash
does the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import submitit

from pixelqa.launch.settings import is_launcher_arg
from pixelqa.launch.status import DONE, FAILED, REQUEUED, RUNNING, job_identity, wait_for, write_status


def last_checkpoint(args: list[str]) -> Path:
    """Where the run of these `pixelqa.fit` arguments keeps its `last.ckpt` (relative to the working directory)."""
    from pixelqa.config import load_recipe

    return Path(str(load_recipe(list(args)).output_dir)) / "checkpoints" / "last.ckpt"


def resume_args(args: list[str]) -> list[str]:
    """`args` with `ckpt=last` when the run has a `last.ckpt` to continue from (else unchanged: a fresh start)."""
    kept = [a for a in args if not a.startswith("ckpt=")]
    return [*kept, "ckpt=last"] if last_checkpoint(kept).is_file() else kept


class FitJob(submitit.helpers.Checkpointable):
    """A callable submitit runs in the job: `FitJob(...)(args, resume)` -> the run's final metrics."""

    def __init__(
        self,
        key: str,
        workdir: str | Path,
        status_path: str | Path,
        parent_run_id: str | None = None,
        needs: dict[str, str] | None = None,
        poll_s: float = 10.0,
    ) -> None:
        self.key = key
        self.workdir = str(Path(workdir).resolve())  # relative paths of the recipe mean the submitting directory
        self.status_path = str(Path(status_path).resolve())
        self.parent_run_id = parent_run_id
        self.needs = {k: str(Path(v).resolve()) for k, v in (needs or {}).items()}
        self.poll_s = poll_s

    def __call__(self, args: list[str], resume: bool = False) -> dict[str, float]:
        """Wait for the needed runs, then train (resuming from `last.ckpt` when `resume`); returns the metrics."""
        os.chdir(self.workdir)
        rank_zero = job_identity()["rank"] == 0
        if rank_zero:
            write_status(self.status_path, RUNNING, key=self.key, args=list(args))
        try:
            wait_for(self.needs, poll_s=self.poll_s)
            # The job is where the run runs: a launcher among its arguments (a job pickled by an older version
            # has them) would be refused by pixelqa.fit.
            args = [a for a in args if not is_launcher_arg(a)]
            run_args = resume_args(args) if resume else list(args)
            if rank_zero:
                print(f"[{self.key}] python -m pixelqa.fit {' '.join(run_args)}", flush=True)
            from pixelqa.fit import run

            metrics = run(run_args, parent_run_id=self.parent_run_id)
        except SystemExit:  # submitit requeues a preempted / timed-out job by exiting: it is not a failure
            if rank_zero:
                write_status(self.status_path, REQUEUED, key=self.key)
            raise
        except BaseException as err:
            if rank_zero:
                write_status(self.status_path, FAILED, key=self.key, error=f"{type(err).__name__}: {err}")
            raise
        metrics = {k: float(v) for k, v in metrics.items()}
        if rank_zero:
            write_status(self.status_path, DONE, key=self.key, metrics=metrics)
        return metrics

    def checkpoint(self, args: list[str], resume: bool = False) -> Any:
        """On preemption or time-out: the same run again, resuming from its last checkpoint."""
        return submitit.helpers.DelayedSubmission(self, list(args), resume=True)
