"""The status file of a job: one small JSON that the job rewrites (atomically) as it starts, requeues and ends.

    {"state": "RUNNING" | "REQUEUED" | "DONE" | "FAILED", "job_id": ..., "host": ..., "pid": ..., "time": ...,
     "metrics": {...} (DONE), "error": "..." (FAILED)}

It is how the submitting side learns a job's outcome without asking the scheduler (results survive `sacct`
retention), and how a job waits for the jobs it depends on (SLURM's `afterok` does the same on a cluster; the
local executor has no dependencies, so the wait is what orders its jobs).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pixelqa.launch.executor import pid_alive

RUNNING, REQUEUED, DONE, FAILED = "RUNNING", "REQUEUED", "DONE", "FAILED"


class DependencyFailed(RuntimeError):
    """A job this one depends on failed or died: this one cannot run."""


def job_identity() -> dict[str, Any]:
    """This process's job id (submitit's, when inside a job), host, pid and global rank."""
    ident: dict[str, Any] = {"job_id": None, "host": socket.gethostname(), "pid": os.getpid(), "rank": 0}
    try:
        import submitit

        env = submitit.JobEnvironment()
        ident["job_id"], ident["rank"] = str(env.job_id), int(env.global_rank)
    except RuntimeError:  # not inside a submitit job (e.g. a test calling the job in-process)
        pass
    if ident["rank"] == 0:
        ident["rank"] = launched_rank()
    return ident


def launched_rank() -> int:
    """The rank of a process Lightning's DDP launcher started inside a job (it re-runs the job's command with RANK /
    LOCAL_RANK / NODE_RANK set; submitit's environment, inherited, still says rank 0); 0 for every other process."""
    local = int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0)
    node = int(os.environ.get("NODE_RANK") or 0)
    return local if local or not node else node


def write_status(path: str | Path, state: str, **fields: Any) -> None:
    """Record `state` (and job id, host, pid, time, any `fields`) in the status file at `path`, atomically."""
    from pixelqa.data.shards import write_text_atomic

    ident = job_identity()
    record = {"state": state, "job_id": ident["job_id"], "host": ident["host"], "pid": ident["pid"]}
    record.update(time=time.time(), **fields)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1, default=str) + "\n")


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status recorded at `path`, or None when the job has not started."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def died(status: Mapping[str, Any] | None) -> bool:
    """Whether a job that says RUNNING is gone: its process, on this host, no longer exists (e.g. SIGKILL)."""
    return (
        status is not None
        and status.get("state") == RUNNING
        and status.get("host") == socket.gethostname()
        and not pid_alive(int(status.get("pid", 0)))
    )


def wait_for(needs: Mapping[str, str | Path], poll_s: float = 10.0, timeout_s: float | None = None) -> None:
    """Block until every status file in `needs` (name -> path) says DONE; raise DependencyFailed if one fails."""
    start = time.monotonic()
    pending = dict(needs)
    while pending:
        for name, path in list(pending.items()):
            status = read_status(path)
            if status is not None and status.get("state") == DONE:
                del pending[name]
            elif status is not None and status.get("state") == FAILED:
                raise DependencyFailed(f"dependency {name} failed ({status.get('error', 'no message')}); see {path}")
            elif died(status):
                raise DependencyFailed(f"dependency {name} died (pid {status['pid']} is gone); see {path}")
        if pending:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise DependencyFailed(f"dependencies {sorted(pending)} not done after {timeout_s:.0f} s")
            time.sleep(poll_s)
