"""`python -m pixelqa.data build|mixture ... --num-nodes N launcher=subprocess|slurm`: a job array and a verify job.

Array task r runs the very same command with `--node-rank r --num-nodes N` (the build's own partitioning: node
r converts the r-th block of items into shards r, r + N, ...), so a task is nothing but today's per-node build.
A final job waits for every task (SLURM `afterok`), checks every node's manifest against the shards on disk
(size and SHA-256) and, for a mixture, writes its spec. A task that dies leaves its complete shards and its
progress file: rerunning the command resubmits only tasks that failed or never ran, and each resumes where it
stopped; shard files are byte-identical to an uninterrupted build. A preempted task requeues itself the same way.

Files: `<out>/.jobs/<label>/state.json` (job ids), `task-NNN.json` / `verify.json` (status), `submitit/` (logs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import submitit

from pixelqa.launch.executor import ACTIVE_STATES, make_executor, scheduler_state
from pixelqa.launch.status import DONE, FAILED, REQUEUED, RUNNING, died, read_status, wait_for, write_status

REQUEUE_EXIT_CODES = (-1, 144)  # submitit's exits after requeueing a job (SLURM, local executor)


class ShardTask(submitit.helpers.Checkpointable):
    """Array task `rank`: `python -m pixelqa.data <argv> --node-rank rank --num-nodes N`, run in-process."""

    def __init__(self, workdir: str | Path, argv: list[str], num_nodes: int, status_dir: str | Path) -> None:
        self.workdir = str(Path(workdir).resolve())
        self.argv = list(argv)
        self.num_nodes = num_nodes
        self.status_dir = str(Path(status_dir).resolve())

    def status_path(self, rank: int) -> Path:
        """The status file of task `rank`."""
        return Path(self.status_dir) / f"task-{rank:03d}.json"

    def __call__(self, rank: int) -> int:
        """Build node `rank`'s shards (resuming a previous attempt's progress); returns the rank."""
        from pixelqa.data.cli import main as data_main

        os.chdir(self.workdir)
        path = self.status_path(rank)
        write_status(path, RUNNING, rank=rank)
        try:
            data_main([*self.argv, "--node-rank", str(rank), "--num-nodes", str(self.num_nodes)])
        except SystemExit as err:
            requeued = err.code in REQUEUE_EXIT_CODES
            write_status(path, REQUEUED if requeued else FAILED, rank=rank, error=f"exit status {err.code}")
            raise
        except BaseException as err:
            write_status(path, FAILED, rank=rank, error=f"{type(err).__name__}: {err}")
            raise
        write_status(path, DONE, rank=rank)
        return rank

    def checkpoint(self, rank: int) -> Any:
        """On preemption or time-out: the same task again (the build resumes from its progress file)."""
        return submitit.helpers.DelayedSubmission(self, rank)


class VerifyJob:
    """The final job: wait for every task, verify the manifests against the shards, write the mixture spec."""

    def __init__(
        self,
        workdir: str | Path,
        out: str,
        entries: list[tuple[str, str, float]],
        num_nodes: int,
        status_dir: str | Path,
        mixture: str | None,
        allow_missing: bool,
        poll_s: float,
    ) -> None:
        self.workdir = str(Path(workdir).resolve())
        self.out, self.entries, self.num_nodes, self.mixture = out, entries, num_nodes, mixture
        self.status_dir = str(Path(status_dir).resolve())
        self.allow_missing, self.poll_s = allow_missing, poll_s

    def __call__(self) -> dict[str, Any]:
        """Returns {"problems": [], "spec": path or None}; raises RuntimeError naming every problem."""
        from pixelqa.data.mixture import MixtureEntry, verify_shards, write_mixture_spec

        os.chdir(self.workdir)
        path = Path(self.status_dir) / "verify.json"
        write_status(path, RUNNING)
        try:
            tasks = {f"task {r}": Path(self.status_dir) / f"task-{r:03d}.json" for r in range(self.num_nodes)}
            wait_for(tasks, self.poll_s)
            entries = [MixtureEntry(n, s, r) for n, s, r in self.entries]
            problems = verify_shards(entries, self.out, self.num_nodes, allow_missing=self.allow_missing)
            if problems:
                raise RuntimeError(f"{len(problems)} problem(s) with the built shards: " + "; ".join(problems[:20]))
            spec = str(write_mixture_spec(self.mixture, entries, self.out)) if self.mixture else None
        except BaseException as err:
            write_status(path, FAILED, error=f"{type(err).__name__}: {err}")
            raise
        write_status(path, DONE, spec=spec)
        print(f"verified {len(self.entries)} source(s) x {self.num_nodes} node(s)" + (f"; spec {spec}" if spec else ""))
        return {"problems": [], "spec": spec}


def launcher_args_of(argv: list[str]) -> tuple[list[str], list[str]]:
    """(`launcher=...`/`launcher.x=...` arguments, the others) of a command line."""
    ours = [a for a in argv if a.split("=", 1)[0] == "launcher" or a.startswith("launcher.")]
    return ours, [a for a in argv if a not in ours]


def _without_partition(argv: list[str]) -> list[str]:
    """The command line minus --node-rank/--num-nodes (each task gets its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--node-rank", "--num-nodes"):
            skip = True
        elif not a.startswith(("--node-rank=", "--num-nodes=")):
            out.append(a)
    return out


def _task_state(rank: int, job: dict | None, status_dir: Path, launcher: Any, folder: Path) -> str:
    status = read_status(status_dir / f"task-{rank:03d}.json")
    if status is not None and status.get("state") == DONE:
        return DONE
    if job is None or (status is not None and status.get("state") == FAILED) or died(status):
        return FAILED if job is not None or status is not None else "NOT RUN"
    state = scheduler_state(launcher, folder, str(job["job_id"]))
    return state if state in ACTIVE_STATES or state == "UNKNOWN" else FAILED


def check_raw_files(args: argparse.Namespace, entries: list[tuple[str, str, float]], num_nodes: int) -> None:
    """Before submitting: the raw files each task will read exist, as a build here checks before it starts (the
    error would otherwise appear only in the jobs' logs)."""
    from pixelqa.data.mixture import MixtureEntry, check_mixture_inputs, parse_roots
    from pixelqa.data.shards import check_build_inputs

    if args.command == "build":
        check_build_inputs(args.source, args.split, args.root, args.out)
        return
    mix = [MixtureEntry(name, split, repeat) for name, split, repeat in entries]
    # with --on-error skip the tasks skip sources without raw files, as a build here does
    check_mixture_inputs(
        mix, args.root, args.out, parse_roots(args.roots), 0, num_nodes, args.on_error, "nothing submitted"
    )


def launch_shard_build(args: argparse.Namespace, argv: list[str], launcher_argv: list[str]) -> bool:
    """Submit a build or mixture as an array of `--num-nodes` tasks plus a verify job; False when inline."""
    from pixelqa.config import load_recipe
    from pixelqa.data.mixture import load_mixture
    from pixelqa.launch.executor import check_can_submit

    launcher = load_recipe(launcher_argv).launcher
    if launcher.executor == "inline":
        return False
    check_can_submit(launcher)  # before any state: submitit would fail only after the job folder is written
    if args.node_rank != 0:
        raise SystemExit(f"--node-rank={args.node_rank}: with launcher={launcher.executor} each task gets its own")
    if args.command == "mixture" and (args.out is None or args.root is None):
        raise SystemExit("mixture with a launcher builds shards: it needs --root RAW and --out SHARDS")
    n = int(args.num_nodes)
    if args.command == "build":
        entries, mixture, label = [(args.source, args.split, 1.0)], None, f"build-{args.source}-{args.split}"
    else:
        recipe = args.recipe.split("=", 1)[1] if args.recipe.startswith("recipe=") else args.recipe
        mixture = Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe
        entries = [(e.name, e.split, e.repeat) for e in load_mixture(recipe)]
        label = f"mixture-{mixture}"
    check_raw_files(args, entries, n)
    jobs_dir = Path(args.out) / ".jobs" / label
    folder = Path(launcher.folder) if launcher.folder else jobs_dir / "submitit"
    state_path = jobs_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"tasks": {}, "verify": None}
    if state.get("num_nodes", n) != n:
        raise SystemExit(f"--num-nodes={n}: {args.out} is being built with {state['num_nodes']} nodes ({state_path})")
    state["num_nodes"] = n

    def save() -> None:
        from pixelqa.data.shards import write_text_atomic

        jobs_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(state_path, json.dumps(state, indent=1))

    states = {r: _task_state(r, state["tasks"].get(str(r)), jobs_dir, launcher, folder) for r in range(n)}
    todo = [r for r, st in states.items() if st in (FAILED, "NOT RUN")]
    task = ShardTask(Path.cwd(), _without_partition(argv), n, jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if todo:
        for r in todo:
            task.status_path(r).unlink(missing_ok=True)
        executor = make_executor(launcher, folder, f"shards-{label}")
        submitted = executor.map_array(task, todo)
        for r, job in zip(todo, submitted):
            attempt = int(state["tasks"].get(str(r), {}).get("attempt", 0)) + 1
            state["tasks"][str(r)] = {"job_id": str(job.job_id), "attempt": attempt}
            print(f"submitted task {r}/{n}: job {job.job_id} (attempt {attempt})")
        save()
    verify_status = read_status(jobs_dir / "verify.json")
    if todo or verify_status is None or verify_status.get("state") in (FAILED,) or died(verify_status):
        pending = [state["tasks"][str(r)]["job_id"] for r in range(n) if r in todo or states[r] != DONE]
        (jobs_dir / "verify.json").unlink(missing_ok=True)
        verify = VerifyJob(
            Path.cwd(),
            str(args.out),
            entries,
            n,
            jobs_dir,
            mixture,
            allow_missing=args.on_error == "skip",
            poll_s=float(launcher.poll_s),
        )
        job = make_executor(launcher, folder, f"verify-{label}", dependencies=pending or None).submit(verify)
        state["verify"] = {"job_id": str(job.job_id)}
        save()
        print(f"submitted verify job {job.job_id} (after tasks {', '.join(pending) or 'already done'})")
    else:
        print(f"nothing to submit: every task is done or in flight, verify is {verify_status.get('state')}")
    if launcher.wait:
        wait_shard_build(jobs_dir, launcher, folder, state)
    return True


def wait_shard_build(jobs_dir: Path, launcher: Any, folder: Path, state: dict) -> str:
    """Block until the verify job has ended; returns DONE or FAILED (and says why)."""
    while True:
        status = read_status(jobs_dir / "verify.json")
        if status is not None and status.get("state") in (DONE, FAILED):
            break
        job = state.get("verify")
        sched = scheduler_state(launcher, folder, job["job_id"]) if job is not None else "UNKNOWN"
        ended = sched not in ACTIVE_STATES and sched != "UNKNOWN"
        if died(status) or (ended and (status is None or status.get("state") == RUNNING)):
            status = {"state": FAILED, "error": "the verify job ended without a result; see its log in " + str(folder)}
            break
        time.sleep(float(launcher.poll_s))
    print(f"shard build {status['state']}" + (f": {status.get('error')}" if status["state"] == FAILED else ""))
    return str(status["state"])
