"""The `launcher` node of a recipe: where jobs run (this process, processes on this machine, SLURM) and on what.

Presets live in `recipes/launcher/` (`local`, `subprocess`, `slurm`); any key can be set on the command line,
e.g. `launcher=slurm launcher.partition=gpu launcher.nodes=2 launcher.time_min=2880`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# inline: in this process, one after another (no submitit); subprocess: submitit's LocalExecutor (each job a
# process on this machine); slurm: submitit's SlurmExecutor (each job an sbatch submission).
EXECUTORS: tuple[str, ...] = ("inline", "subprocess", "slurm")


@dataclass
class LauncherConfig:
    """Executor and resources of the jobs a grid or a shard build submits."""

    executor: str = "inline"
    folder: str | None = None  # submitit's logs and pickles (default: beside the grid state / the shards)
    nodes: int = 1  # nodes per job (multi-node DDP: Lightning reads the SLURM environment)
    gpus_per_node: int = 0  # also the tasks (processes) per node when > 0: one process per GPU
    cpus_per_task: int = 4
    mem_gb: float | None = None  # None: the partition's default
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 2880  # wall-clock limit per job; a job that reaches it is requeued and resumes
    signal_delay_s: int = 120  # SLURM sends USR2 this long before the limit: time to requeue
    max_requeue: int = 3  # time-outs / preemptions a job may be requeued after
    array_parallelism: int = 64  # shard builds: array tasks running at once
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load, venv, ...)
    additional: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. {mail-type: END}
    wait: bool = False  # block until every submitted job has ended (then collect results)
    poll_s: float = 10.0  # how often waiting jobs and `wait` look at status files


def is_launcher_arg(arg: str) -> bool:
    """Whether a command-line argument chooses where runs run (`launcher=...`, `launcher.KEY=...`)."""
    key = arg.split("=", 1)[0]
    return key == "launcher" or key.startswith("launcher.")
