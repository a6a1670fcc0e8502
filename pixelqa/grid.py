"""Ablation grids: `python -m pixelqa.grid experiments/hidden_tokens.yaml [--dry-run] [key=value ...]`.

A grid file names a recipe, overrides applied to every cell, and the keys to sweep:

    name: hidden-tokens
    recipe: stage3
    overrides: [trainer.max_steps=200]
    grid:
      model.hidden_tokens: [1, 2, 4, 8]
    metrics: ["val/J&F", "val/qa_acc"]

Every cell of the Cartesian product runs `pixelqa.fit` (train + evaluate) as a child MLflow run of one parent
run. Finished cells are recorded in `runs/grid/<name>/state.json`, so a rerun after a kill resumes where it
stopped (same parent run). At the end the parent run gets the result table (CSV + Markdown) and a plot.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pixelqa.config import RecipeError, load_recipe
from pixelqa.tracking import end_run, log_parent_artifact, start_parent_run, table_csv, table_markdown

GRID_TAG = "pixelqa.grid"  # tag of a grid's parent run (the ablation dashboard looks for it)


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, in file order."""
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.axes[k] for k in keys))]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with keys name, recipe, overrides, grid, metrics")
    unknown = set(raw) - {"name", "recipe", "overrides", "grid", "metrics", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; valid: name, recipe, overrides, grid, metrics")
    axes = raw.get("grid") or {}
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"{path}: `grid` must map at least one recipe key to a list of values, got {axes!r}")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    return Grid(
        name=str(raw.get("name", path.stem)),
        recipe=str(raw.get("recipe", "stage3")),
        overrides=[str(o) for o in raw.get("overrides", [])],
        axes={str(k): list(v) for k, v in axes.items()},
        metrics=[str(m) for m in raw.get("metrics", [])],
    )


def cell_id(cell: dict[str, Any]) -> str:
    """A readable, filesystem-safe id of a cell, e.g. `model.hidden_tokens=4`."""
    return ",".join(f"{k}={v}" for k, v in cell.items()).replace("/", "_")


def cell_args(grid: Grid, cell: dict[str, Any], extra: list[str]) -> list[str]:
    """The `pixelqa.fit` arguments of one cell (grid overrides, then the cell's values, then the command line)."""
    values = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in cell.items()]
    out = f"runs/grid/{grid.name}/{cell_id(cell)}"
    return [f"recipe={grid.recipe}", *grid.overrides, *extra, *values, f"output_dir={out}"]


def _write_atomic(path: Path, text: str) -> None:
    from pixelqa.data.shards import write_text_atomic  # heavy imports: not needed by --dry-run

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def result_table(grid: Grid, results: dict[str, dict[str, float]]) -> tuple[str, str]:
    """(CSV, Markdown) of the finished cells: one row per cell, one column per swept key and metric."""
    metrics = grid.metrics or sorted({m for r in results.values() for m in r})
    rows = []
    for cell in grid.cells():
        found = results.get(cell_id(cell))
        if found is not None:
            row = {k: str(cell[k]) for k in grid.axes}
            row.update({m: f"{found.get(m, float('nan')):.4f}" for m in metrics})
            rows.append(row)
    return table_csv(rows), table_markdown(rows)


def _plot(grid: Grid, results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = grid.metrics or sorted({m for r in results.values() for m in r})
    cells = [c for c in grid.cells() if cell_id(c) in results]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4 * max(len(metrics), 1), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.bar(range(len(cells)), [results[cell_id(c)].get(metric, float("nan")) for c in cells])
        ax.set_xticks(range(len(cells)), [",".join(str(v) for v in c.values()) for c in cells], rotation=30)
        ax.set_title(metric)
    fig.suptitle(f"{grid.name}: {', '.join(grid.axes)}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_grid(path: str | Path, extra: list[str] | None = None, dry_run: bool = False) -> dict[str, dict[str, float]]:
    """Run (or resume) every cell of a grid; returns cell id -> final metrics."""
    grid = load_grid(path)
    extra = list(extra or [])
    cells = grid.cells()
    for cell in cells:  # fail before any work if a cell's recipe is invalid
        try:
            load_recipe(cell_args(grid, cell, extra))
        except RecipeError as err:
            raise RecipeError(f"grid {grid.name}, cell {cell_id(cell)}: {err}") from None
    if dry_run:
        for cell in cells:
            print("python -m pixelqa.fit " + " ".join(cell_args(grid, cell, extra)))
        return {}

    from pixelqa.fit import run as fit_run

    tracking = load_recipe(cell_args(grid, cells[0], extra)).tracking
    state_path = Path(f"runs/grid/{grid.name}/state.json")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"parent_run_id": None, "results": {}}
    if state["parent_run_id"] is None:
        params = {"grid.recipe": grid.recipe, **{f"grid.{k}": json.dumps(v) for k, v in grid.axes.items()}}
        state["parent_run_id"] = start_parent_run(f"grid:{grid.name}", tracking, params, tags={GRID_TAG: grid.name})
        _write_atomic(state_path, json.dumps(state, indent=1))
    parent_id = state["parent_run_id"]
    for i, cell in enumerate(cells):
        cid = cell_id(cell)
        if cid in state["results"]:
            print(f"[grid {grid.name}] cell {i + 1}/{len(cells)} {cid}: done before, skipped")
            continue
        print(f"[grid {grid.name}] cell {i + 1}/{len(cells)} {cid}")
        metrics = fit_run(cell_args(grid, cell, extra), parent_run_id=parent_id)
        state["results"][cid] = {k: float(v) for k, v in metrics.items()}
        _write_atomic(state_path, json.dumps(state, indent=1))
    csv_text, md_text = result_table(grid, state["results"])
    out = state_path.parent
    _write_atomic(out / "results.csv", csv_text)
    _write_atomic(out / "results.md", md_text)
    _plot(grid, state["results"], out / "results.png")
    for name in ("results.csv", "results.md", "results.png"):
        log_parent_artifact(parent_id, tracking, out / name)
    end_run(parent_id, tracking)
    print(md_text, end="")
    return state["results"]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.grid", description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid file, e.g. experiments/hidden_tokens.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the fit command of every cell and stop")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every cell")
    args = parser.parse_args(argv)
    run_grid(args.grid, args.overrides, dry_run=args.dry_run)


if __name__ == "__main__":
    main()
