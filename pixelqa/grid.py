"""Ablation grids: `python -m pixelqa.grid experiments/X.yaml [launcher=local|subprocess|slurm] [key=value ...]`.

A grid file names a recipe, overrides applied to every cell, and the keys to sweep:

    name: hidden-tokens
    recipe: stage3
    overrides: [trainer.max_steps=200]
    grid:
      model.hidden_tokens: [1, 2, 4, 8]
    metrics: ["val/J&F", "val/qa_acc"]

Runs the cells need first (e.g. a stage-2 model every stage-3 cell starts from) are `prerequisites`, each with
its own recipe and overrides (and `init_from` another prerequisite); `init_from: NAME` starts every cell from
NAME's `last.ckpt`. On a cluster these become job dependencies.

    prerequisites:
      stage2: {recipe: stage2, overrides: [trainer.max_steps=1000]}
    init_from: stage2

Every cell runs `pixelqa.fit` (train + evaluate) as a child MLflow run (named by the cell) of one parent run.
`launcher=local` (the default) runs the cells here, one after another; `runs/grid/<name>/state.json` records each
run's settings when it starts and its result when it finishes, so a rerun after a kill resumes where it stopped
(same parent run): finished runs are skipped, and the run that was killed continues from its `last.ckpt`
(`ckpt=last`, same MLflow run; one line says from which step) when its settings are unchanged.
A run that raises (a NaN, out of memory: any exception but Ctrl-C) does not stop a local grid: its error is
printed on one line and kept in state.json, its traceback in `<run folder>/failure.log`, its MLflow run ends FAILED,
the cells that start from it (a failed prerequisite) are not run, and the grid goes on with the next run. The result
table lists the failed cells as FAILED, the parent run ends FAILED, `--status` shows them FAILED, and the command
ends with one line naming them and exit status 1; a rerun retries them (from their `last.ckpt` when the settings are
unchanged) and skips the finished ones, except a run stopped at a NaN/inf step (`NonFiniteStepError`; state.json
records each failure's error type): with the same settings it would reach the same NaN again (every random draw is
seeded from the seed and the step), so it stays FAILED, with one line saying so, until its settings change.
A local grid runs every run inside the grid's own process, one after another: a run of several processes
(`trainer.devices` or `trainer.num_nodes` above 1) is refused before any work; `launcher=subprocess|slurm` runs it
as a job.
`launcher=subprocess|slurm` submits each run as a job (pixelqa.launch) and returns: `--status` shows each run's
job, state and last metric, a rerun resubmits only runs that failed or never ran (resuming from their
`last.ckpt`), and `--collect` (or `launcher.wait=true`) writes the results once every cell is done. At the end the
parent run gets the result table (CSV + Markdown) and a plot: the grid's `metrics`, or without that list every
metric the cells logged but wall times (`time/*`, kept in state.json and MLflow). See docs/cluster.md.

A stored result counts only for the settings that produced it: state.json keeps each run's `pixelqa.fit`
arguments (the grid's overrides, the command line's and the cell's; `launcher...` ones excluded, as they say
where a run runs, not what it computes), the recipe they resolve to (loaded as `pixelqa.fit` loads it, launcher
keys left out: an edited recipe or preset file changes it under the same arguments) and those of the
prerequisites it started from. A rerun with other settings (e.g. `trainer.max_steps=50` after `=3`, or
`recipes/scale/demo.yaml` edited: `recipe files edited: optim.lr 0.003 -> 0.001`) says which changed and runs
the cell again from scratch (its old checkpoints are moved to `checkpoints.previous/`, never resumed); so does a
result with no recorded settings (a state.json of an older version), and so does a killed run's `last.ckpt` made
under other settings or under none recorded. A record of the version before resolved
recipes (arguments, no recipe) is kept on its arguments as that version kept it, with one printed note that
recipe-file edits could not be checked for those runs; it then takes the current recipe, so later edits count.
The replaced MLflow child run stays under the parent, tagged `pixelqa.superseded=true` (`pixelqa.superseded_reason`,
and `pixelqa.superseded_by` the run that replaced it): `pixelqa.tracking.child_runs` leaves it out, so that a table
of the grid's children has one run per cell.
`output_dir=ROOT` (in the grid's overrides or on the command line) moves the grid's folder to `ROOT/<name>/`
(state, results, one folder per run) instead of `runs/grid/<name>/`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pixelqa.config import RecipeError, load_recipe
from pixelqa.tracking import (
    end_run,
    load_run_id,
    log_parent_artifact,
    start_parent_run,
    supersede_runs,
    table_csv,
    table_markdown,
)

GRID_TAG = "pixelqa.grid"  # tag of a grid's parent run (the ablation dashboard looks for it)
GRID_KEYS = ("name", "recipe", "overrides", "grid", "metrics", "description", "prerequisites", "init_from")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
DEFAULT_ROOT = "runs/grid"  # the grids' folder (relative to the working directory) unless output_dir= moves it
OUTPUT_DIR = "output_dir="


FAILURE_LOG = "failure.log"  # in a run's folder: the traceback of its last failed attempt (a local grid)
ERROR_CHARS = 300  # a failure's message on one line, cut here: the whole text is in the failure log
# the error type (state.json's failed.KEY.type) of a run stopped at a NaN/inf step: every random draw is seeded from
# the seed and the step, so the same settings reach the same NaN at the same step again
NONFINITE_STEP = "pixelqa.train.finite.NonFiniteStepError"


class GridError(ValueError):
    """A grid file that cannot be used: unknown key, bad value, unknown prerequisite."""


class FailedRunsError(RuntimeError):
    """Runs of a local grid that raised: the grid went on without them; `failed` (key -> `ErrorType: message`)
    names them, `results` holds the finished cells' metrics (what `run_grid` returns when none fails)."""

    def __init__(
        self,
        grid: str,
        failed: Mapping[str, str],
        results: dict[str, dict[str, float]],
        total: int,
        nonfinite: list[str] | None = None,
    ) -> None:
        self.failed = dict(failed)
        self.results = results
        # a run stopped at a NaN/inf step is retried only under other settings (`_start_args`): say so here too
        unless = f" ({', '.join(nonfinite)} stopped at a NaN/inf step: change its settings first)" if nonfinite else ""
        super().__init__(
            f"[grid {grid}] {len(failed)} of {total} run(s) FAILED: {', '.join(failed)} (errors above, tracebacks in "
            f"each run's {FAILURE_LOG}); run the grid again to retry them{unless}"
        )


@dataclass
class Prerequisite:
    """A run trained once before the cells (e.g. the stage-2 model that every stage-3 cell starts from)."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    init_from: str | None = None  # another prerequisite this one starts from


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    prerequisites: dict[str, Prerequisite] = field(default_factory=dict)  # in dependency order
    init_from: str | None = None  # the prerequisite every cell starts from
    root: str = DEFAULT_ROOT  # the grid's folder is root/name

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, in file order."""
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.axes[k] for k in keys))]


def _prerequisites(raw: Any, where: str) -> dict[str, Prerequisite]:
    """Parse `prerequisites:` and order it so that each comes after the one it starts from."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GridError(f"{where}: `prerequisites` must map names to {{recipe, overrides, init_from}}, got {raw!r}")
    found: dict[str, Prerequisite] = {}
    for name, spec in raw.items():
        name = str(name)
        if not NAME_RE.match(name):
            raise GridError(f"{where}: prerequisite name {name!r}: expected letters, digits, '_', '.', '-' only")
        if not isinstance(spec, dict) or set(spec) - {"recipe", "overrides", "init_from"} or "recipe" not in spec:
            raise GridError(f"{where}: prerequisites.{name} must be {{recipe, overrides, init_from}}, got {spec!r}")
        overrides = [str(o) for o in spec.get("overrides") or []]
        if any(o.startswith(OUTPUT_DIR) for o in overrides):
            raise GridError(
                f"{where}: prerequisites.{name}.overrides sets output_dir, which the grid chooses (ROOT/<grid name>/"
                f"{name}); to move the whole grid, put output_dir=ROOT in the grid's overrides or on the command line"
            )
        found[name] = Prerequisite(name, str(spec["recipe"]), overrides, spec.get("init_from"))
    ordered: dict[str, Prerequisite] = {}
    while len(ordered) < len(found):
        ready = [p for n, p in found.items() if n not in ordered and (p.init_from is None or p.init_from in ordered)]
        if not ready:
            left = {n: p.init_from for n, p in found.items() if n not in ordered}
            bad = {n: f for n, f in left.items() if f not in found}
            what = f"init_from names no prerequisite: {bad}" if bad else f"init_from forms a cycle: {left}"
            raise GridError(f"{where}: prerequisites {what}; valid names: {sorted(found)}")
        for p in ready:
            ordered[p.name] = p
    return ordered


def grid_file(path: str | Path) -> Path:
    """The grid file `path` names: the path itself, else (a relative `experiments/NAME.yaml` or `NAME.yaml`) the
    shipped grid of that name (`pixelqa.resources`: a clone's experiments/ or an installed package's copy)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_absolute():
        from pixelqa.resources import ResourceNotFoundError, resource_dir

        parts = given.parts[1:] if given.parts[:1] == ("experiments",) else given.parts
        try:
            shipped = resource_dir("experiments").joinpath(*parts)
        except ResourceNotFoundError:
            shipped = None
        if shipped is not None and shipped.is_file():
            return shipped
    raise FileNotFoundError(f"grid file {path} does not exist (nor among the shipped experiments/)")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file."""
    path = grid_file(path)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a mapping with keys name, recipe, overrides, grid, metrics")
    unknown = set(raw) - set(GRID_KEYS)
    if unknown:
        raise GridError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(GRID_KEYS)}")
    axes = raw.get("grid") or {}
    if not isinstance(axes, dict) or not axes:
        raise GridError(f"{path}: `grid` must map at least one recipe key to a list of values, got {axes!r}")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    if "output_dir" in axes:
        raise GridError(f"{path}: grid.output_dir cannot be swept: the grid gives each cell ROOT/<grid name>/<cell>")
    prerequisites = _prerequisites(raw.get("prerequisites"), str(path))
    init_from = raw.get("init_from")
    if init_from is not None and str(init_from) not in prerequisites:
        raise GridError(
            f"{path}: init_from={init_from!r} names no prerequisite; valid: {sorted(prerequisites) or 'none defined'}"
        )
    grid = Grid(
        name=str(raw.get("name", path.stem)),
        recipe=str(raw.get("recipe", "stage3")),
        axes={str(k): list(v) for k, v in axes.items()},
        metrics=[str(m) for m in raw.get("metrics", [])],
        prerequisites=prerequisites,
        init_from=None if init_from is None else str(init_from),
    )
    grid.overrides = take_output_dir(grid, [str(o) for o in raw.get("overrides", [])])
    return grid


def take_output_dir(grid: Grid, overrides: list[str]) -> list[str]:
    """Move the grid's folder to `ROOT/<name>` for each `output_dir=ROOT` (last wins); returns the other overrides."""
    # Passed on, a user's output_dir would be overridden by each run's own folder and silently ignored.
    for arg in overrides:
        if arg.startswith(OUTPUT_DIR):
            root = arg[len(OUTPUT_DIR) :]
            if not root:
                raise GridError("output_dir=: expected a folder for the grid (ROOT, giving ROOT/<grid name>/<cell>)")
            grid.root = root
    return [a for a in overrides if not a.startswith(OUTPUT_DIR)]


def cell_id(cell: dict[str, Any]) -> str:
    """A readable, filesystem-safe id of a cell, e.g. `model.hidden_tokens=4`."""
    return ",".join(f"{k}={v}" for k, v in cell.items()).replace("/", "_")


def grid_dir(grid: Grid) -> Path:
    """The grid's folder (`runs/grid/<name>` unless output_dir= moved it): state, results, one folder per run."""
    return Path(grid.root) / grid.name


def _last_ckpt_of(grid: Grid, prerequisite: str) -> str:
    return str(grid_dir(grid) / prerequisite / "checkpoints" / "last.ckpt")


def _run_name(name: str) -> str:
    return "tracking.run_name='" + name.replace("'", "''") + "'"  # quoted: cell ids hold '=' and ','


def cell_args(grid: Grid, cell: dict[str, Any], extra: list[str]) -> list[str]:
    """The `pixelqa.fit` arguments of one cell (grid overrides, then the command line, then the cell's values)."""
    values = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in cell.items()]
    start = [f"init_from={_last_ckpt_of(grid, grid.init_from)}"] if grid.init_from else []
    out = grid_dir(grid) / cell_id(cell)
    name = _run_name(cell_id(cell))
    return [f"recipe={grid.recipe}", *grid.overrides, *start, *extra, *values, name, f"output_dir={out}"]


def prerequisite_args(grid: Grid, pre: Prerequisite, extra: list[str]) -> list[str]:
    """The `pixelqa.fit` arguments of a prerequisite run (its overrides, then the command line)."""
    start = [f"init_from={_last_ckpt_of(grid, pre.init_from)}"] if pre.init_from else []
    out = grid_dir(grid) / pre.name
    return [f"recipe={pre.recipe}", *pre.overrides, *start, *extra, _run_name(pre.name), f"output_dir={out}"]


def fit_specs(grid: Grid, extra: list[str], launcher: Any = None) -> list[Any]:
    """Every run of the grid as a `FitSpec`, prerequisites first; on SLURM the trainer follows the allocation."""
    from pixelqa.launch.runs import FitSpec

    hardware = []
    if launcher is not None and launcher.executor == "slurm":
        # Lightning checks its trainer against the SLURM environment: nodes and processes per node must match.
        hardware = [f"trainer.num_nodes={launcher.nodes}"]
        hardware += [f"trainer.devices={launcher.gpus_per_node}"] if launcher.gpus_per_node else []
    # A run's own arguments leave out the launcher (command line, grid overrides): the run runs where it is put,
    # and pixelqa.fit refuses a launcher.
    specs = []
    for pre in grid.prerequisites.values():
        args = [a for a in prerequisite_args(grid, pre, extra) if _determines_result(a)]
        args[-1:-1] = hardware
        specs.append(FitSpec(pre.name, args, str(grid_dir(grid) / pre.name), [pre.init_from] if pre.init_from else []))
    for cell in grid.cells():
        args = [a for a in cell_args(grid, cell, extra) if _determines_result(a)]
        args[-1:-1] = hardware
        needs = [grid.init_from] if grid.init_from else []
        specs.append(FitSpec(cell_id(cell), args, str(grid_dir(grid) / cell_id(cell)), needs))
    return specs


def _determines_result(arg: str) -> bool:
    from pixelqa.launch.settings import is_launcher_arg

    # launcher=... and launcher.*=... choose where a run runs (here, a job, a cluster), not what it computes
    return not is_launcher_arg(arg)


def resolved_recipe(args: list[str]) -> dict[str, Any]:
    """The recipe `pixelqa.fit` builds from a run's arguments, as flat `key -> value` pairs (launcher keys left out),
    in the form state.json stores it."""
    from pixelqa.config import flatten

    flat = flatten(load_recipe(args))
    # a recipe file's `defaults:` may name a launcher preset: like launcher arguments, it says where, not what
    kept = {k: v for k, v in flat.items() if _determines_result(k) and k != "presets.launcher"}
    return json.loads(json.dumps(kept, default=str))  # a reloaded state.json compares equal to it


def run_settings(specs: list[Any]) -> dict[str, dict[str, Any]]:
    """key -> what determines the run's result: its fit arguments, the recipe they resolve to (so that an edited
    recipe file counts) and the settings of the runs it starts from."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:  # prerequisites come before the runs that need them
        args = [a for a in spec.args if _determines_result(a)]
        out[spec.key] = {"args": args, "recipe": resolved_recipe(args), "needs": {n: out.get(n) for n in spec.needs}}
    return out


def _arg_changes(old: list[str], new: list[str]) -> str:
    """`key old -> new` for each argument that differs (the last of a key wins, as in the recipe)."""
    before = dict(a.split("=", 1) if "=" in a else (a, "") for a in old)
    after = dict(a.split("=", 1) if "=" in a else (a, "") for a in new)
    return _recipe_changes(before, after, most=None) or "the same arguments in another order"


def _shown(value: Any) -> str:
    """A recipe value as a YAML file or the command line spells it (`0.001`, `true`, `null`, `[1, 2]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def _recipe_changes(old: Mapping[str, Any], new: Mapping[str, Any], most: int | None = 6) -> str:
    """`key old -> new` for each key that differs, in the new order then the old-only keys (the first `most`, then
    how many more; None: all)."""
    keys = [k for k in [*new, *(k for k in old if k not in new)] if old.get(k, None) != new.get(k, None)]
    shown = keys if most is None else keys[:most]
    changes = [
        f"{k} {_shown(old[k]) if k in old else 'unset'} -> {_shown(new[k]) if k in new else 'unset'}" for k in shown
    ]
    more = f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return ", ".join(changes) + more


def _settings_diff(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str | None:
    if stored is None:
        return "no record"
    if list(stored.get("args", [])) != list(wanted["args"]):
        return _arg_changes(list(stored.get("args", [])), list(wanted["args"]))
    # the same arguments resolve otherwise when a recipe or preset file was edited; a record of an older version
    # has no resolved recipe and is taken on its arguments, as that version did (`_adopt_older_records`)
    if "recipe" in stored and stored["recipe"] != wanted["recipe"]:
        return "recipe files edited: " + _recipe_changes(stored["recipe"], wanted["recipe"])
    for name, need in wanted["needs"].items():
        # a cell started from a prerequisite that has changed since is stale too, though its own arguments are not
        diff = _settings_diff((stored.get("needs") or {}).get(name), need) if need is not None else None
        if diff is not None:
            return f"prerequisite {name}: {diff}"
    return None


def settings_change(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str | None:
    """Why a stored result does not stand for a run with the `wanted` settings; None when it does."""
    if stored is None:
        return "the stored result has no record of the settings that produced it (state.json of an older version)"
    diff = _settings_diff(stored, wanted)
    return None if diff is None else f"settings changed since the stored result ({diff})"


def _without_recipe(stored: Mapping[str, Any] | None) -> bool:
    """Whether a stored record, or that of a prerequisite in it, was written without the resolved recipe."""
    if stored is None:
        return False
    needs = (stored.get("needs") or {}).values()
    return "recipe" not in stored or any(_without_recipe(n) for n in needs)


def _adopt_older_records(grid: Grid, state: dict[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Records of an older version (no resolved recipe) whose arguments match are kept, as that version kept
    them, and take the current recipe, so that later edits are detected; says so once. Returns their keys."""
    adopted = [
        key
        for key, stored in state["settings"].items()
        if key in wanted and _without_recipe(stored) and settings_change(stored, wanted[key]) is None
    ]
    for key in adopted:
        state["settings"][key] = wanted[key]
    if adopted:
        print(
            f"[grid {grid.name}] note: state.json of an older version records no resolved recipe for {len(adopted)} "
            f"run(s) ({', '.join(adopted)}): kept on their arguments, as that version did, so edits to recipe files "
            "made before now could not be checked for them (later edits will be)"
        )
    return adopted


def _current_results(state: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The stored results that the `wanted` settings produce (key -> metrics)."""
    return {
        k: v
        for k, v in state["results"].items()
        if k in wanted and settings_change(state["settings"].get(k), wanted[k]) is None
    }


def _resumable_checkpoint(spec: Any) -> Path | None:
    """The `checkpoints/last.ckpt` a run left behind (a file, or DeepSpeed's folder, as `ckpt=last` takes), or None."""
    last = Path(spec.output_dir) / "checkpoints" / "last.ckpt"
    # a dangling link (its step file deleted) cannot be resumed: None, and the run starts afresh
    return last if last.is_file() or (last.is_dir() and (last / "checkpoint").is_dir()) else None


def _checkpoint_step(last: Path) -> str:
    """`step N` from the step file `last.ckpt` links to (`step000015.ckpt`); the path when its name says no step."""
    found = re.search(r"step(\d+)", last.resolve().name)
    return f"step {int(found.group(1))}" if found else str(last)


def _set_aside_checkpoints(spec: Any) -> Path | None:
    """Move a run's checkpoints away, so that nothing resumes them with other settings; returns where."""
    from pixelqa.fit import set_aside_previous

    return set_aside_previous(Path(spec.output_dir) / "checkpoints")


def _write_atomic(path: Path, text: str) -> None:
    from pixelqa.data.shards import write_text_atomic  # heavy imports: not needed by --dry-run

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


RESULTS_LEGEND = (
    "Each cell's final validation. teacher-forced: the model reads the reference answer, its masks are scored on "
    "the frames sampled for the model; free generation: greedy answers, masks on every frame (README, What the "
    "demo measures)."
)


def scoring_of(metric: str) -> str | None:
    """Which scoring a fit metric comes from: "free generation" (`val/gen/...`), "teacher-forced" (the other
    `val/...`), None for anything else (training, data, time); `untrained/` ones alike."""
    name = metric.removeprefix("untrained/")
    if is_time_metric(metric):
        return None
    if name.startswith("val/gen/"):
        return "free generation"
    return "teacher-forced" if name.startswith("val/") else None


# the wall time of fit's generation pass before it was renamed `time/val_gen_s`: a time in a state.json written then
OLD_TIME_METRICS = ("val/gen/time_s", "untrained/val/gen/time_s")


def is_time_metric(metric: str) -> bool:
    """Whether a metric is a wall time (`time/...`; `val/gen/time_s` of older runs), which no table compares."""
    return metric.startswith(("time/", "untrained/time/")) or metric in OLD_TIME_METRICS


def table_metrics(grid: Grid, results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The metrics of the result table and plot: the grid's `metrics`, else every metric a cell of the grid logged
    except wall times (`time/*` differ on every rerun and score nothing; they stay in state.json and MLflow)."""
    if grid.metrics:
        return list(grid.metrics)
    cells = {cell_id(c) for c in grid.cells()}
    return sorted({m for k, r in results.items() if k in cells for m in r if not is_time_metric(m)})


def result_table(
    grid: Grid, results: dict[str, dict[str, float]], failed: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(CSV, Markdown) of the finished cells: one row per cell, one column per swept key and metric
    (`table_metrics`). CSV headers are the metric names (what scripts and dashboards read); Markdown headers add the
    scoring, with a legend. `failed` (run key -> why, e.g. `RuntimeError: ... (traceback in PATH)`): those cells get a
    row too, with no metrics, and a `status` column says FAILED or done; the Markdown lists each failed run's why."""
    metrics = table_metrics(grid, results)
    failed = {k: v for k, v in (failed or {}).items() if k not in results}
    cells = {cell_id(c) for c in grid.cells()}
    rows = []
    for cell in grid.cells():
        found = results.get(cell_id(cell))
        if found is None and cell_id(cell) not in failed:
            continue
        row = {k: str(cell[k]) for k in grid.axes}
        # a failed cell has no value: empty in the CSV (read as missing), not a number that could be taken for one
        row.update({m: "" if found is None else f"{found.get(m, float('nan')):.4f}" for m in metrics})
        if cells & set(failed):
            row["status"] = "done" if found is not None else "FAILED"
        rows.append(row)
    # val/J&F and val/gen/J&F sit side by side and can be equal: the header says which is which
    shown = {m: f"{m} ({scoring_of(m)})" if scoring_of(m) else m for m in metrics}
    md = table_markdown([{shown.get(k, k): v or "-" for k, v in r.items()} for r in rows])
    if md and any(scoring_of(m) for m in metrics):
        md += f"\n{RESULTS_LEGEND}\n"
    if failed:
        md += "\nFailed runs (run the grid again to retry them):\n"
        md += "".join(f"- {k}: {v}\n" for k, v in failed.items())
    return table_csv(rows), md


def _plot(grid: Grid, results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in grid.cells() if cell_id(c) in results]
    metrics = table_metrics(grid, results)
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4 * max(len(metrics), 1), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.bar(range(len(cells)), [results[cell_id(c)].get(metric, float("nan")) for c in cells])
        ax.set_xticks(range(len(cells)), [",".join(str(v) for v in c.values()) for c in cells], rotation=30)
        ax.set_title(metric)
    fig.suptitle(f"{grid.name}: {', '.join(grid.axes)}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _processes(trainer: Any) -> int:
    """The processes a run's trainer config starts (`pixelqa.fit.world_size`); torch is imported only when the
    answer is not plainly 1 (`--dry-run` stays fast)."""
    if str(trainer.devices) == "1" and int(trainer.num_nodes) == 1:
        return 1
    from pixelqa.fit import world_size

    return world_size(trainer)


def _check_inline_processes(cfg: Any) -> None:
    """Refuse a run of several processes in a local grid: Lightning starts each extra rank by running this process's
    command again (the whole grid), and a rank's failure cannot be caught here without leaving the others behind."""
    if cfg.launcher.executor != "inline":
        return
    t = cfg.trainer
    n = _processes(t)
    if n == 1:
        return
    raise RecipeError(
        f"trainer.devices={t.devices} (trainer.num_nodes={t.num_nodes}, trainer.strategy={t.strategy}) starts {n} "
        "processes, but launcher=local runs each run inside the grid's own process, which cannot run several: use "
        "launcher=subprocess (this machine) or launcher=slurm, which run each run as a job (docs/cluster.md), or "
        "one process (trainer.devices=1 trainer.num_nodes=1)"
    )


def _check_cells(grid: Grid, extra: list[str]) -> Any:
    """Load every run's recipe (fail before any work if one is invalid, or asks a local grid for several processes);
    returns the first cell's recipe."""
    for pre in grid.prerequisites.values():
        try:
            _check_inline_processes(load_recipe(prerequisite_args(grid, pre, extra)))
        except RecipeError as err:
            raise RecipeError(f"grid {grid.name}, prerequisite {pre.name}: {err}") from None
    first = None
    for cell in grid.cells():
        try:
            cfg = load_recipe(cell_args(grid, cell, extra))
            _check_inline_processes(cfg)
        except RecipeError as err:
            raise RecipeError(f"grid {grid.name}, cell {cell_id(cell)}: {err}") from None
        first = cfg if first is None else first
    return first


LOCK_ADVICE = (
    "another `python -m pixelqa.grid` of this grid runs there: wait for it to finish (--status shows its cells), or "
    "give this one another output_dir="
)


def _locked(fn: Callable[..., dict[str, dict[str, float]]]) -> Callable[..., dict[str, dict[str, float]]]:
    """`fn(grid, ...)` holding the grid folder's lock: two invocations of one grid would run every cell twice, in
    the same cell folders, and each rewrite state.json from its own copy (a --status read needs no lock)."""
    import functools

    @functools.wraps(fn)
    def locked(grid: Grid, *args: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
        from pixelqa.locks import folder_lock

        # re-entrant: submit_grid collects (collect_grid) under the lock it holds
        with folder_lock(grid_dir(grid), "grid", LOCK_ADVICE, error=GridError):
            return fn(grid, *args, **kwargs)

    return locked


def _load_state(grid: Grid) -> dict[str, Any]:
    path = grid_dir(grid) / "state.json"
    try:
        state = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:  # written whole or not at all since writes became atomic: an older damage
        raise GridError(
            f"{path} is not valid JSON ({err}); move it aside to start the grid's bookkeeping afresh (cells whose "
            "results it recorded then run again)"
        ) from None
    # settings: key -> the run_settings that produced the run's result (or its job, while in flight); failed: key ->
    # {error, type, log} of a local run whose last attempt raised (type: the exception's qualified class name)
    return {"parent_run_id": None, "results": {}, "jobs": {}, "settings": {}, "failed": {}, **state}


def _save_state(grid: Grid, state: dict[str, Any]) -> None:
    # a temporary of a unique name, renamed: two writers never rename each other's half-written one
    _write_atomic(grid_dir(grid) / "state.json", json.dumps(state, indent=1))


def _parent_run(grid: Grid, state: dict[str, Any], tracking: Any) -> str | None:
    """The grid's parent MLflow run, created (and stored in the state) on first use; None with tracking off."""
    if not tracking.enabled:  # tracking=none: no store is created or written, the cells run untracked too
        return None
    if state["parent_run_id"] is None:
        params = {"grid.recipe": grid.recipe, **{f"grid.{k}": json.dumps(v) for k, v in grid.axes.items()}}
        state["parent_run_id"] = start_parent_run(f"grid:{grid.name}", tracking, params, tags={GRID_TAG: grid.name})
        _save_state(grid, state)
    return state["parent_run_id"]


def _finish(grid: Grid, state: dict[str, Any], tracking: Any, failed: Mapping[str, str] | None = None) -> None:
    """Write the result table and plot, attach them to the parent run and close it (FAILED when runs failed:
    `failed`, run key -> why, as `result_table` takes it)."""
    csv_text, md_text = result_table(grid, state["results"], failed)
    out = grid_dir(grid)
    _write_atomic(out / "results.csv", csv_text)
    _write_atomic(out / "results.md", md_text)
    _plot(grid, state["results"], out / "results.png")
    parent_id = state["parent_run_id"]
    if parent_id is not None and tracking.enabled:
        for name in ("results.csv", "results.md", "results.png"):
            log_parent_artifact(parent_id, tracking, out / name)
        end_run(parent_id, tracking, "FAILED" if failed else "FINISHED")
    print(md_text, end="")


def sqlite_warning(tracking: Any, launcher: Any) -> str | None:
    """A warning when cluster jobs would log to a file only this machine may see (None when fine)."""
    from pixelqa.tracking import resolve_uris

    if launcher.executor != "slurm" or not tracking.enabled:
        return None
    uri, artifacts = resolve_uris(tracking)
    if not uri.startswith(("sqlite:", "file:")) and "://" in uri:
        return None
    return (
        f"warning: tracking.tracking_uri={uri} is a local SQLite file, and the jobs run on other nodes: they can "
        f"log only if {Path(uri.split(':///', 1)[-1]).parent} (and artifacts {artifacts}) is on a filesystem "
        "every node mounts, and SQLite over NFS with many writers corrupts or locks. Start an MLflow server "
        "(`mlflow server --backend-store-uri sqlite:///mlruns.db --host 0.0.0.0`) and pass "
        "tracking.tracking_uri=http://HOST:5000 (see docs/cluster.md)."
    )


def _launch_folder(grid: Grid, launcher: Any) -> Path:
    return Path(launcher.folder) if launcher.folder else grid_dir(grid) / "jobs"


def _prepare_shards(specs: list[Any]) -> None:
    """Build missing synthetic shards here, once: parallel jobs building the same folder would collide."""
    from pixelqa.config import to_object
    from pixelqa.train.datamodule import build_synthetic, check_sources

    seen = set()
    for spec in specs:
        data = to_object(load_recipe(spec.args)).data
        check_sources(data)
        sizes = {"train": data.synthetic_train, "val": data.synthetic_val}
        for src in [*data.sources, *data.val_sources]:
            key = (data.shards, src.split, sizes.get(src.split, data.synthetic_val))
            if src.name == "synthetic" and data.build_if_missing and key not in seen:
                seen.add(key)
                build_synthetic(*key)


def _supersede(
    grid: Grid, tracking: Any, parent_id: str | None, spec: Any, why: str = "", latest: bool = False
) -> None:
    """Tag superseded the older MLflow child runs of a grid run, so that tables of the grid's children list one
    run per cell; `latest`: the run's current MLflow run (from its run id file) is kept and named as their successor."""
    if parent_id is None or not tracking.enabled:
        return
    keep = load_run_id(Path(spec.output_dir) / "checkpoints") if latest else None
    if latest and keep is None:
        return  # no run of the current settings to point at (none started, or it logged nothing)
    marked = supersede_runs(tracking, parent_id, spec.key, keep=keep, reason=why)
    if marked:
        print(f"[grid {grid.name}] {spec.key}: older MLflow run(s) {', '.join(marked)} tagged superseded")


def _close_dead_run(tracking: Any) -> Any:
    """A hook for resubmission: a run killed before its first checkpoint cannot resume; mark its MLflow run."""

    def close(spec: Any) -> None:
        from pixelqa.launch.fit_job import last_checkpoint
        from pixelqa.tracking import load_run_id

        run_id = load_run_id(Path(spec.output_dir) / "checkpoints")
        if run_id is None or last_checkpoint(spec.args).is_file() or not tracking.enabled:
            return
        from mlflow import MlflowClient

        from pixelqa.tracking import resolve_uris

        if MlflowClient(tracking_uri=resolve_uris(tracking)[0]).get_run(run_id).info.status == "RUNNING":
            end_run(run_id, tracking, "KILLED")

    return close


def _drop_stale_runs(
    grid: Grid,
    specs: list[Any],
    state: dict[str, Any],
    wanted: Mapping[str, Any],
    launcher: Any,
    folder: Path,
    tracking: Any,
) -> None:
    """Forget each run done, failed or submitted with other settings, so that it is submitted afresh."""
    from pixelqa.launch.runs import in_flight, run_state

    for spec in specs:
        job = state["jobs"].get(spec.key)
        if spec.key not in state["results"] and job is None and not spec.status_path.is_file():
            continue  # never ran
        why = settings_change(state["settings"].get(spec.key), wanted[spec.key])
        if why is None:
            continue
        now = run_state(spec, job, launcher, folder)
        if in_flight(now):
            raise GridError(
                f"run {spec.key}: job {job['job_id'] if job else '?'} is {now} with other settings ({why}); "
                "wait for it to end or cancel it, then submit again"
            )
        # Without its job record the run is submitted as new: no `ckpt=last`, a fresh MLflow run.
        state["results"].pop(spec.key, None)
        state["jobs"].pop(spec.key, None)
        spec.status_path.unlink(missing_ok=True)
        _set_aside_checkpoints(spec)
        # its MLflow run stays a child of the grid under the same name: tagged, it leaves the grid's tables
        _supersede(grid, tracking, state["parent_run_id"], spec, why)
        print(f"[grid {grid.name}] {spec.key}: {why}, submitting it again from scratch")


@_locked
def submit_grid(grid: Grid, extra: list[str], recipe: Any) -> dict[str, dict[str, float]]:
    """Submit every run that failed or never ran as a job; with `launcher.wait`, wait and collect."""
    from pixelqa.launch.runs import DONE, submit_runs, wait_runs

    launcher, tracking = recipe.launcher, recipe.tracking
    warning = sqlite_warning(tracking, launcher)
    if warning:
        print(warning, file=sys.stderr)
    specs = fit_specs(grid, extra, launcher)
    _prepare_shards(specs)
    state = _load_state(grid)
    folder = _launch_folder(grid, launcher)
    wanted = run_settings(specs)
    _adopt_older_records(grid, state, wanted)
    _drop_stale_runs(grid, specs, state, wanted, launcher, folder, tracking)
    state["settings"].update(wanted)  # every run left or (re)submitted now runs with these
    _save_state(grid, state)
    parent_id = _parent_run(grid, state, tracking)
    submitted = submit_runs(
        specs,
        state["jobs"],
        launcher,
        folder,
        parent_id,
        job_name=f"grid-{grid.name}",
        on_submit=lambda: _save_state(grid, state),
        before_resubmit=_close_dead_run(tracking),
    )
    print(f"[grid {grid.name}] {len(submitted)} job(s) submitted ({launcher.executor}); logs in {folder}")
    if not launcher.wait:
        print(f"[grid {grid.name}] follow with --status; write the results with --collect when every cell is done")
        return {}
    final = wait_runs(specs, state["jobs"], launcher, folder)
    if any(st != DONE for st in final.values()):
        grid_status(grid, extra, recipe)  # which runs failed, before saying which cells are missing
    return collect_grid(grid, extra, recipe)


@_locked
def collect_grid(grid: Grid, extra: list[str], recipe: Any) -> dict[str, dict[str, float]]:
    """Gather finished runs' metrics; when every cell is done, write the table and plot and close the parent."""
    from pixelqa.launch.runs import run_results

    specs = fit_specs(grid, extra, recipe.launcher)
    wanted = run_settings(specs)
    state = _load_state(grid)
    _adopt_older_records(grid, state, wanted)
    for key, metrics in run_results(specs).items():
        if settings_change(state["settings"].get(key), wanted[key]) is None:  # a job of other settings: not ours
            state["results"][key] = metrics
    _save_state(grid, state)
    current = _current_results(state, wanted)
    for spec in specs:
        if spec.key in current:  # the runs it replaced (other settings, killed attempts) point at it
            _supersede(grid, recipe.tracking, state["parent_run_id"], spec, latest=True)
    missing = [cell_id(c) for c in grid.cells() if cell_id(c) not in current]
    if missing:
        print(f"[grid {grid.name}] {len(missing)} cell(s) not done yet: {', '.join(missing)} (see --status)")
        for key in missing:
            if key in state["results"]:
                why = settings_change(state["settings"].get(key), wanted[key])
                print(f"[grid {grid.name}] {key}: {why}; submit the grid again to rerun it")
        return current
    if state["parent_run_id"] is None:
        state["parent_run_id"] = _parent_run(grid, state, recipe.tracking)
    _finish(grid, state, recipe.tracking)
    return state["results"]


def grid_status(grid: Grid, extra: list[str], recipe: Any) -> list[dict[str, str]]:
    """Print (and return) one row per run: job id, attempt, state, last metric; then the error and traceback log of
    each local run whose last attempt failed."""
    from pixelqa.launch.runs import DONE, FAILED, NOT_RUN, status_table

    specs = fit_specs(grid, extra, recipe.launcher)
    state = _load_state(grid)
    wanted = run_settings(specs)
    current = _current_results(state, wanted)
    rows = status_table(
        specs,
        state["jobs"],
        recipe.launcher,
        _launch_folder(grid, recipe.launcher),
        recipe.tracking,
        grid.metrics or ["val/J&F", "train/loss"],
    )
    for row in rows:  # cells run inline are done, or failed, without a job
        if row["run"] in current:
            row["state"] = DONE
        elif row["state"] == DONE and settings_change(state["settings"].get(row["run"]), wanted[row["run"]]):
            row["state"] = "DONE (other settings)"
        elif row["state"] == NOT_RUN and row["run"] in state["failed"]:
            row["state"] = FAILED
    print(table_markdown(rows), end="")
    for key in (row["run"] for row in rows if row["state"] == FAILED and row["run"] in state["failed"]):
        failure = state["failed"][key]  # a local run's (a job's failure is in its log: the table names the job)
        where = f"; traceback in {failure['log']}" if failure.get("log") else ""
        print(f"[grid {grid.name}] {key}: FAILED ({failure['error']}){where}")
    return rows


def _start_args(
    grid: Grid,
    state: dict[str, Any],
    spec: Any,
    wanted: Mapping[str, Any],
    parent_id: str | None,
    tracking: Any,
    head: str,
) -> list[str] | None:
    """The fit arguments a run starts with now (`ckpt=last` to resume a killed or failed one), having said why on one
    line and set aside checkpoints of other settings; None when it is done with these settings (skipped), or when it
    stopped at a NaN/inf step with these very settings (kept failed: a retry would replay it to the same step)."""
    args = list(spec.args)
    stored = state["settings"].get(spec.key)
    last = _resumable_checkpoint(spec)
    before = state["failed"].pop(spec.key, None)  # its last attempt raised: this one retries it
    if before and before.get("type") == NONFINITE_STEP and _settings_diff(stored, wanted) is None:
        state["failed"][spec.key] = before  # not retried: it stays failed (table, FailedRunsError)
        print(
            f"{head}: stopped at a NaN/inf step before ({before['error']}); not retried with the same settings: "
            "change them for this cell (e.g. optim.lr) and run the grid again"
        )
        return None
    if spec.key in state["results"]:
        why = settings_change(stored, wanted)
        if why is None:
            print(f"{head}: done before, skipped")
            return None
        # the rerun starts afresh: the old checkpoints (other settings) must not be resumed
        moved = _set_aside_checkpoints(spec)
        print(f"{head}: {why}, rerunning" + (f" (old checkpoints moved to {moved})" if moved else ""))
        _supersede(grid, tracking, parent_id, spec, why)  # now: a rerun that fails must not bring it back
    elif last is not None and stored is not None and _settings_diff(stored, wanted) is None:
        # killed (or failed) after a checkpoint under these very settings: continue it, as a requeued job does
        args = [*(a for a in args if not a.startswith("ckpt=")), "ckpt=last"]
        stopped = f"failed before ({before['error']})" if before else "stopped before it finished"
        print(f"{head}: {stopped}, resuming from {_checkpoint_step(last)} (ckpt=last)")
    elif last is not None:
        # checkpoints of other (or unrecorded) settings must not be resumed: start afresh, as for a stored result
        if stored is None:  # killed under a version that recorded settings only at the end
            why = "no record of the settings its checkpoints were made with"
        else:
            why = f"its checkpoints were made with other settings ({_settings_diff(stored, wanted)})"
        moved = _set_aside_checkpoints(spec)
        print(f"{head}: {why}, starting afresh (old checkpoints moved to {moved})")
        _supersede(grid, tracking, parent_id, spec, why)
    elif before:
        print(f"{head}: failed before ({before['error']}), running it again (no checkpoint to resume)")
    else:
        print(head)
    return args


def _one_line(err: BaseException) -> str:
    """`ErrorType: message` on one line (whitespace collapsed, cut at ERROR_CHARS); `ErrorType` without a message."""
    message = " ".join(str(err).split())
    if len(message) > ERROR_CHARS:
        message = message[: ERROR_CHARS - 3] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _close_failed_run(tracking: Any, spec: Any) -> None:
    """End the run's MLflow run FAILED if it is still RUNNING: Lightning ends it so for an error inside training or
    validation, not for one raised around them (e.g. the generation pass after fit)."""
    run_id = load_run_id(Path(spec.output_dir) / "checkpoints")
    if run_id is None or not tracking.enabled:
        return
    from mlflow import MlflowClient

    from pixelqa.tracking import resolve_uris

    try:
        if MlflowClient(tracking_uri=resolve_uris(tracking)[0]).get_run(run_id).info.status == "RUNNING":
            end_run(run_id, tracking, "FAILED")
    except Exception as err:  # the store is unreachable: the grid still goes on  # noqa: BLE001
        print(f"warning: {spec.key}: could not mark MLflow run {run_id} FAILED ({_one_line(err)})", file=sys.stderr)


def _record_failure(
    grid: Grid, state: dict[str, Any], spec: Any, args: list[str], err: Exception, tracking: Any, head: str
) -> None:
    """Keep a run's failure: its traceback in `<run folder>/failure.log`, its one-line error in state.json, its
    MLflow run FAILED, and one printed line naming both."""
    log = Path(spec.output_dir) / FAILURE_LOG
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    _write_atomic(log, f"[grid {grid.name}] {spec.key}: python -m pixelqa.fit {' '.join(args)}\n\n{trace}")
    error = _one_line(err)
    kind = f"{type(err).__module__}.{type(err).__qualname__}"  # a rerun tells a NaN/inf stop from the others
    state["failed"][spec.key] = {"error": error, "type": kind, "log": str(log)}
    _save_state(grid, state)
    _close_failed_run(tracking, spec)
    print(f"{head}: FAILED ({error}); traceback in {log}", flush=True)


def _release_memory() -> None:
    """Free what a failed run left behind (its model and optimizer, CUDA's cached blocks): after an out-of-memory
    error the next run must not start on a full device."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # imported by any run that got as far as the device
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _attempt(
    grid: Grid, state: dict[str, Any], spec: Any, args: list[str], parent_id: str | None, tracking: Any, head: str
) -> dict[str, float] | None:
    """One run's fit; its metrics, or None when it raised (recorded by `_record_failure`; the grid goes on).
    Ctrl-C (KeyboardInterrupt) and SystemExit are not caught: they stop the grid at once, resumable."""
    from pixelqa.fit import run as fit_run

    try:
        return fit_run(args, parent_run_id=parent_id)
    except Exception as err:  # a NaN, out of memory, a bug: this run's failure, not the grid's  # noqa: BLE001
        _record_failure(grid, state, spec, args, err, tracking, head)
    _release_memory()  # here, not in the handler: the traceback (whose frames hold the run's model) is gone
    return None


def _failure_notes(state: Mapping[str, Any], keys: list[str]) -> dict[str, str]:
    """key -> `ErrorType: message (traceback in PATH)` of each of `keys` whose last attempt failed."""
    failed = state["failed"]
    return {
        k: failed[k]["error"] + (f" (traceback in {failed[k]['log']})" if failed[k].get("log") else "")
        for k in keys
        if k in failed
    }


@_locked
def _run_inline(grid: Grid, extra: list[str], recipe: Any) -> dict[str, dict[str, float]]:
    """Every run in this process, one after another (a rerun skips finished ones, resumes a killed one and retries a
    failed one, but one stopped at a NaN/inf step only under other settings); a run that raises is recorded and the
    grid goes on: `FailedRunsError` after the table names them."""
    state = _load_state(grid)
    parent_id = _parent_run(grid, state, recipe.tracking)
    specs = fit_specs(grid, extra)
    wanted = run_settings(specs)
    if _adopt_older_records(grid, state, wanted):
        _save_state(grid, state)
    for i, spec in enumerate(specs):
        head = f"[grid {grid.name}] run {i + 1}/{len(specs)} {spec.key}"
        failed_needs = [n for n in spec.needs if n in state["failed"]]
        if failed_needs:  # it would start from a checkpoint that was never written
            # a result of its older settings would otherwise stand in the table beside the failure
            state["results"].pop(spec.key, None)
            state["failed"][spec.key] = {"error": f"not run: prerequisite {', '.join(failed_needs)} failed"}
            _save_state(grid, state)
            print(f"{head}: not run, its prerequisite {', '.join(failed_needs)} failed")
            continue
        args = _start_args(grid, state, spec, wanted[spec.key], parent_id, recipe.tracking, head)
        if args is None:
            continue
        # Recorded before the run, not after: a kill then leaves the settings its checkpoints were made with, so the
        # next rerun can tell a resumable run from a stale one. A result of other settings is dropped with them.
        state["results"].pop(spec.key, None)
        state["settings"][spec.key] = wanted[spec.key]
        _save_state(grid, state)
        metrics = _attempt(grid, state, spec, args, parent_id, recipe.tracking, head)
        if metrics is None:
            continue
        _supersede(grid, recipe.tracking, parent_id, spec, latest=True)
        state["results"][spec.key] = {k: float(v) for k, v in metrics.items()}
        Path(spec.output_dir, FAILURE_LOG).unlink(missing_ok=True)  # an earlier attempt's: no longer this run's
        _save_state(grid, state)
    failed = _failure_notes(state, [s.key for s in specs])
    _finish(grid, state, recipe.tracking, failed)
    results = {k: v for k, v in state["results"].items() if k in {cell_id(c) for c in grid.cells()}}
    if failed:
        errors = {k: state["failed"][k]["error"] for k in failed}
        nonfinite = [k for k in failed if state["failed"][k].get("type") == NONFINITE_STEP]
        raise FailedRunsError(grid.name, errors, results, len(specs), nonfinite)
    return results


def run_grid(
    path: str | Path, extra: list[str] | None = None, dry_run: bool = False, action: str = "run"
) -> dict[str, dict[str, float]]:
    """Run, submit (or resubmit) every cell of a grid; returns cell id -> final metrics of the finished cells. Run
    here (`launcher=local`), runs that raised leave the others running: `FailedRunsError` (naming them, holding the
    finished cells' metrics) is raised once the table is written.

    `action` is `run` (the default), `status` (print each run's state) or `collect` (gather finished jobs).
    """
    grid = load_grid(path)
    extra = take_output_dir(grid, list(extra or []))
    recipe = _check_cells(grid, extra)
    if dry_run:
        for spec in fit_specs(grid, extra, recipe.launcher):
            print("python -m pixelqa.fit " + " ".join(spec.args))
        return {}
    from pixelqa.launch.executor import check_can_submit
    from pixelqa.preflight import check_tracking

    if action == "run":  # before the shards, state.json and the parent run: a machine without SLURM fails here
        check_can_submit(recipe.launcher)
    check_tracking(recipe.tracking)  # the parent run is the first work: an unusable store fails before it
    if action == "status":
        grid_status(grid, extra, recipe)
        return {}
    if action == "collect":
        return collect_grid(grid, extra, recipe)
    if recipe.launcher.executor == "inline":
        return _run_inline(grid, extra, recipe)
    return submit_grid(grid, extra, recipe)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: a bad grid file or recipe ends in one line and exit status 2; runs of a local grid that
    failed (the others ran) in one line naming them, and exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.grid", description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid file, e.g. experiments/hidden_tokens.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the fit command of every run and stop")
    parser.add_argument("--status", action="store_true", help="show each run's job id, state and last metric")
    parser.add_argument("--collect", action="store_true", help="gather finished jobs; write the table when all done")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every cell (launcher=... too)")
    args = parser.parse_intermixed_args(argv)  # options may come anywhere among the overrides
    action = "status" if args.status else "collect" if args.collect else "run"
    try:  # the grid file and every run's recipe are checked before any work: their errors are the user's
        grid = load_grid(args.grid)
        _check_cells(grid, take_output_dir(grid, list(args.overrides)))
        run_grid(args.grid, args.overrides, dry_run=args.dry_run, action=action)
    except (GridError, RecipeError, FileNotFoundError) as err:
        print(f"grid error: {err}", file=sys.stderr)
        sys.exit(2)
    except FailedRunsError as err:  # the table is written; the last line names the failed runs, for scripts
        print(err, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
