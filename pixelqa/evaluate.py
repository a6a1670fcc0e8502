"""Evaluate a checkpoint on a benchmark: `python -m pixelqa.evaluate recipe=stage3 ckpt=PATH eval.benchmark=synthetic`.

This single-benchmark form scores **teacher-forced**: the model reads the reference conversation and the masks of its
`<|seg|>` tokens and its arg-max answers are scored (the synthetic split also by free generation, as `eval.scoring`
says). The printed header and summary name the scoring.

The paper's benchmarks through their official protocols (free generation, the official frames, prompts and
aggregation; `pixelqa.eval.official`): `python -m pixelqa.evaluate suite=paper model=unipixel-3b model.path=DIR`
runs every benchmark of recipes/suite/paper.yaml whose shards exist (`suite.only=a,b` picks some) and prints the
paper-style table; see docs/evaluation.md and `pixelqa.eval.suite_runner`.

`ckpt` is a Lightning checkpoint of `pixelqa.fit` (or `last` for <output_dir>/checkpoints/last.ckpt), built with the
model settings it was trained with (a `model.KEY=...` typed here wins; `pixelqa.eval.model_loading`); without it
the untrained model is scored (a baseline). The result table goes to MLflow as CSV and Markdown
(`tables/<benchmark>.csv|md`), with overlays of the first samples; the last lines printed are the headline
metrics, `name: value`. Grid runners call `run(args, parent_run_id=...)`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from pixelqa.config import RecipeError, flatten, load_recipe, run_cli, to_object

# imported by `run`, not here: pixelqa.eval.model_loading imports torchmetrics and the protocols (seconds that
# `--help` should not wait for); still readable as `pixelqa.evaluate.<name>` (module `__getattr__` below)
MODEL_LOADING = ("load_model", "resolve_eval_ckpt", "settle_model_settings")


def __getattr__(name: str) -> Any:
    """`load_model`, `resolve_eval_ckpt`, `settle_model_settings` of `pixelqa.eval.model_loading`, on first use."""
    if name in MODEL_LOADING:
        from pixelqa.eval import model_loading

        return getattr(model_loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pass_metrics(bench: str, passes: list) -> dict[str, float]:
    """Samples scored / expected and damaged records of a protocol's passes; a shortfall (damage, or a sample limit
    below what the shards hold) is printed, never silent."""
    scored, expected = sum(p.scored for p in passes), sum(p.expected for p in passes)
    damaged = sum(p.damaged for p in passes)
    available = sum(p.available if p.available is not None else p.expected for p in passes)
    print(
        f"scored {scored} / {expected} samples of {bench}"
        + (f" ({damaged} damaged records skipped)" if damaged else "")
        + (f" (eval.max_samples: the shards hold {available})" if available > expected else "")
    )
    if scored < expected or available > expected:
        print(
            f"WARNING: {bench} is scored on {scored} of {available} samples; the metrics cover that subset only, not "
            "the benchmark"
        )
    out = {
        f"{bench}/samples_scored": float(scored),
        f"{bench}/samples_expected": float(expected),
        "data/damaged_records": float(damaged),
    }
    if available > expected:
        out[f"{bench}/samples_available"] = float(available)
    return out


def scoring_of(bench: str, recipe: Any) -> str:
    """How the single-benchmark form scores `bench`: the synthetic split as `eval.scoring` says, every other
    benchmark teacher-forced (its official protocol, with free generation, is `suite=paper`)."""
    from pixelqa.train.datamodule import SYNTHETIC

    if bench == SYNTHETIC:
        return {"teacher_forced": "teacher-forced", "generate": "free generation"}.get(
            recipe.eval.scoring, "teacher-forced and free generation"
        )
    return "teacher-forced"


def official_hint(bench: str) -> str:
    """Where `bench`'s official protocol runs: the suite option naming it, or a pointer to docs/evaluation.md."""
    from pixelqa.eval.suite import SuiteError, load_suite

    try:
        names = [s.name for s in load_suite("paper").benchmarks if s.source == bench]
    except (SuiteError, OSError):
        names = []
    if names:
        return f"suite=paper suite.only={','.join(names)}"
    return "suite=paper (docs/evaluation.md)"


def scored_shards(data: Any, passes: list) -> dict[str, str]:
    """`val_stream/manifest/<source>/<split>`: the identity of the shards each pass read (as fit logs its validation
    shards), so that scores of rebuilt shards are told apart in MLflow though every setting is the same."""
    from pixelqa.data.layout import shard_dir
    from pixelqa.train.guards import MANIFEST_KEY, shards_identity

    out = {}
    for p in passes:
        identity = shards_identity(shard_dir(data.shards, p.source, p.split))
        if identity is not None:
            out["val_stream/" + MANIFEST_KEY.format(source=p.source, split=p.split)] = identity
    return out


def check_suite_tracking(args: list[str]) -> None:
    """The MLflow store of a suite run is usable (a suite runs for hours before it logs anything)."""
    from pixelqa.preflight import check_tracking

    try:
        recipe = to_object(load_recipe([a for a in args if not a.startswith("suite")]))  # as run_suite reads them
    except RecipeError:
        return  # run_suite reports recipe errors, with its own suite options checked first
    check_tracking(recipe.tracking)


def check_benchmark_shards(recipe: Any) -> None:
    """A RecipeError (one line: the folder and the command that builds it) when `<data.shards>/<eval.benchmark>/
    <eval.split>/` holds no finished shards, before the model loads; synthetic shards are built on first use unless
    `data.build_if_missing=false`."""
    from pixelqa.eval.suite import missing_split
    from pixelqa.train.datamodule import SYNTHETIC

    bench, split, data = recipe.eval.benchmark, recipe.eval.split, recipe.data
    if bench == SYNTHETIC and data.build_if_missing:
        return
    reason = missing_split(f"eval.benchmark={bench} eval.split={split}", bench, split, data.shards)
    if reason is not None:
        raise RecipeError(reason)


def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
    """Score a checkpoint on `eval.benchmark` (or a suite: `suite=NAME`); returns {"<benchmark>/<metric>": value}."""
    if any(a.startswith("suite=") for a in args):
        from pixelqa.eval.suite_runner import run_suite

        check_suite_tracking(args)
        return run_suite(list(args))
    import torch

    from pixelqa import tracking
    from pixelqa.eval import check_split, get_protocol
    from pixelqa.eval.model_loading import load_model, resolve_eval_ckpt, settle_model_settings
    from pixelqa.eval.runner import counting_passes
    from pixelqa.fit import apply_process_settings
    from pixelqa.preflight import check_run
    from pixelqa.viz import save_overlay

    start = time.time()
    cfg = load_recipe(list(args))
    recipe = to_object(cfg)
    bench = recipe.eval.benchmark
    try:
        protocol = get_protocol(bench)
        check_split(bench, recipe.eval.split)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    check_benchmark_shards(recipe)  # a missing folder fails here, not after the model has loaded
    ckpt_path = resolve_eval_ckpt(recipe.ckpt, recipe.output_dir)
    check_run(recipe)  # output folders, validation shards and the MLflow store, before any work
    # the model trained (the checkpoint's model config), not the recipe's defaults: set before anything records it
    recipe = settle_model_settings(cfg, args, ckpt_path, "MLflow" if recipe.tracking.enabled else None)
    scoring = scoring_of(bench, recipe)
    print(
        f"PixelQA evaluate: benchmark={bench} split={recipe.eval.split} ckpt={ckpt_path or 'none (untrained model)'} "
        f"scoring={scoring}"
    )
    if scoring == "teacher-forced" and recipe.eval.scoring != "teacher_forced" and bench != "synthetic":
        print(
            f"note: eval.scoring={recipe.eval.scoring} applies to the synthetic split; {bench} is scored "
            "teacher-forced here (the model reads the reference answer); its official protocol with free generation: "
            f"{official_hint(bench)}"
        )
    apply_process_settings(recipe.trainer)
    torch.manual_seed(recipe.seed)
    model = load_model(recipe, ckpt_path)
    if torch.cuda.is_available() and recipe.trainer.accelerator in ("gpu", "cuda", "auto"):
        model = model.cuda()
    num_overlays = recipe.tracking.num_overlays if recipe.tracking.log_overlays else 0
    from pixelqa.eval.runner import BenchmarkDataError

    with counting_passes() as passes:
        try:
            result = protocol(model, recipe, num_overlays=num_overlays)
        except BenchmarkDataError as err:
            raise RecipeError(str(err)) from None
    metrics = {f"{bench}/{k}": float(v) for k, v in result.metrics.items()}
    metrics.update(pass_metrics(bench, passes))
    metrics["time/eval_s"] = time.time() - start

    out_dir = Path(recipe.output_dir) / "eval" / bench
    logger = tracking.build_logger(
        recipe.tracking,
        run_name=f"eval-{bench}",
        parent_run_id=parent_run_id,
        tags={
            "benchmark": bench,
            "checkpoint": str(ckpt_path.resolve()) if ckpt_path else "none",
            "scoring": scoring,
        },
    )
    tracking.log_table(logger, result.rows, bench, out_dir)
    # this run's overlays only: an earlier run's into the same output_dir would be logged with this one's
    shutil.rmtree(out_dir / "overlays", ignore_errors=True)
    paths = [
        save_overlay(it["frames"], it["pred"], it["target"], out_dir / "overlays" / f"{i:02d}_{it['key']}")
        for i, it in enumerate(result.overlays)
    ]
    if logger is not None:
        tracking.log_recipe_params(logger, flatten(cfg))
        logger.log_hyperparams(scored_shards(recipe.data, passes))  # rebuilt shards show beside the same recipe
        logger.log_metrics(metrics)
        if paths:
            tracking.log_artifact(logger, out_dir / "overlays", "overlays")
        logger.finalize("success")
    from pixelqa.tracking import table_markdown

    print(table_markdown(result.rows), end="")
    print(f"\n==== PixelQA evaluate summary ({bench}, {scoring}) ====")
    for k in sorted(metrics, key=lambda k: (not k.startswith("time/"), k)):
        print(f"{k}: {metrics[k]:.6g}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m pixelqa.evaluate`: recipe errors exit with status 2 and the message, Ctrl-C with 130
    and what a rerun does."""
    import sys

    from pixelqa.quiet import silence_library_noise

    silence_library_noise()
    args = sys.argv[1:] if argv is None else argv
    try:
        run_cli(run, __doc__, args)
    except KeyboardInterrupt:
        again = (
            "the same command resumes: samples already in the records files are not generated again"
            if any(a.startswith("suite=") for a in args)
            else "scores are written only once every sample is scored; the same command scores again from the start"
        )
        print(f"\nevaluate stopped (Ctrl-C); {again}", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
