"""A submitit executor configured from a `launcher` node, and the scheduler's view of a submitted job.

executor = make_executor(launcher, folder, name="grid-g", dependencies=["4242"])
job = executor.submit(fn, *args)          # job.job_id: SLURM job id, or the local controller's pid
scheduler_state(launcher, folder, job.job_id)   # RUNNING, PENDING, ..., ENDED or UNKNOWN
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pixelqa.config import RecipeError
from pixelqa.files import pid_alive
from pixelqa.launch.settings import EXECUTORS

# SLURM states (sacct) of a job that is still queued or running; anything else has ended.
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "RESIZING",
     "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}
)  # fmt: skip


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, dict) else getattr(cfg, key)


# What submitit's SLURM executor runs on the submitting machine: sbatch submits, srun is looked up when the
# executor is made (sacct and scontrol only answer --status and requeue: without them a state shows UNKNOWN).
SLURM_COMMANDS: tuple[str, ...] = ("sbatch", "srun")


def check_can_submit(launcher: Any) -> None:
    """Before any state is written: `launcher=slurm` needs SLURM's commands on PATH (RecipeError naming them)."""
    if str(_get(launcher, "executor")) != "slurm":
        return
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise RecipeError(
            f"launcher=slurm: {' and '.join(missing)} not found on PATH, so this machine cannot submit SLURM jobs; "
            "run the command on the cluster's login node, or try the setup here with launcher=subprocess"
        )


def tasks_per_node(launcher: Any) -> int:
    """Processes per node: one per GPU when the job has GPUs, else one."""
    return max(1, int(_get(launcher, "gpus_per_node") or 0))


def slurm_parameters(launcher: Any, name: str, dependencies: list[str] | None = None) -> dict[str, Any]:
    """The submitit `SlurmExecutor.update_parameters` arguments of a launcher (sbatch options)."""
    params: dict[str, Any] = {
        "job_name": name,
        "nodes": int(_get(launcher, "nodes")),
        "ntasks_per_node": tasks_per_node(launcher),
        "cpus_per_task": int(_get(launcher, "cpus_per_task")),
        "time": int(_get(launcher, "time_min")),
        "signal_delay_s": int(_get(launcher, "signal_delay_s")),
        "array_parallelism": int(_get(launcher, "array_parallelism")),
        "stderr_to_stdout": True,
        "setup": list(_get(launcher, "setup") or []),
    }
    if int(_get(launcher, "gpus_per_node") or 0) > 0:
        params["gpus_per_node"] = int(_get(launcher, "gpus_per_node"))
    for key in ("partition", "account", "qos", "constraint"):
        if _get(launcher, key):
            params[key] = str(_get(launcher, key))
    if _get(launcher, "mem_gb"):
        params["mem"] = f"{int(float(_get(launcher, 'mem_gb')) * 1024)}MB"
    extra = {str(k): v for k, v in dict(_get(launcher, "additional") or {}).items()}
    extra["requeue"] = True  # a preempted or timed-out job goes back to the queue (submitit requeues it)
    if dependencies:
        # afterok: start only when every prerequisite succeeded; kill the job if one failed (no stuck queue).
        extra["dependency"] = "afterok:" + ":".join(dependencies)
        extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    return params


def make_executor(launcher: Any, folder: str | Path, name: str, dependencies: list[str] | None = None) -> Any:
    """A submitit executor for `launcher.executor` (`subprocess` or `slurm`) writing its files to `folder`."""
    import submitit

    executor = str(_get(launcher, "executor"))
    if executor not in EXECUTORS or executor == "inline":
        raise ValueError(f"launcher.executor={executor!r}: expected 'subprocess' or 'slurm' to submit jobs")
    folder = Path(folder).resolve() / "%j"
    max_requeue = int(_get(launcher, "max_requeue"))
    if executor == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeue)
        ex.update_parameters(**slurm_parameters(launcher, name, dependencies))
        return ex
    if int(_get(launcher, "nodes")) != 1:
        raise ValueError(f"launcher.nodes={_get(launcher, 'nodes')}: the subprocess executor runs on one node")
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeue)
    ex.update_parameters(
        timeout_min=int(_get(launcher, "time_min")),
        tasks_per_node=1,  # one process per job: Lightning starts its own DDP processes on this machine
        gpus_per_node=int(_get(launcher, "gpus_per_node") or 0),
        signal_delay_s=int(_get(launcher, "signal_delay_s")),
        stderr_to_stdout=True,
    )
    return ex


def scheduler_state(launcher: Any, folder: str | Path, job_id: str) -> str:
    """The scheduler's state of a job: a SLURM state (PENDING, RUNNING, FAILED, ...), ENDED (local) or UNKNOWN."""
    executor = str(_get(launcher, "executor"))
    if executor == "subprocess":
        # A local job id is the pid of submitit's controller process, which lives as long as the job.
        return "RUNNING" if job_id.isdigit() and pid_alive(int(job_id)) else "ENDED"
    import submitit

    try:
        state = submitit.SlurmJob(folder=Path(folder).resolve() / "%j", job_id=job_id).state
    except Exception:  # sacct missing or failing: say so rather than guess  # noqa: BLE001
        return "UNKNOWN"
    return str(state).split()[0].upper() if state else "UNKNOWN"
