"""`python -m pixelqa.evaluate suite=paper model=... model.path=...`: every benchmark of a suite whose shards exist,
through its official protocol, as paper-style tables (Markdown, CSV, MLflow), with a provenance record each.

Benchmarks without shards are skipped with the command that builds them. Under torchrun (WORLD_SIZE > 1) the
samples are split by rank (sample i on rank i % world), every rank appends its records, and rank 0 merges them
after a barrier, aggregates and logs. Output: `<output_dir>/suite-<name>/` (records, result.json per benchmark,
paper_table.md|csv, provenance.json). MLflow: one parent run per suite, a child run per benchmark.

Stored results are reused only under the same fingerprint (`run_fingerprint`), computed before the model loads: the
content (SHA-256) of every weight file the model is built from — the `ckpt=` checkpoint, the `model.path` folder's
`*.safetensors|bin|pt|pth` and config.json, the SAM checkpoint `model.mask_decoder.checkpoint` — not only their
paths, so that weights re-exported into the same folder are not taken for the old ones; and the generation route
(the Predictor or the chat stand-in), which answers differently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pixelqa.eval.suite import (
    BenchmarkResult,
    Suite,
    SuiteError,
    _write_json,
    benchmark_fingerprint,
    benchmark_shards_missing,
    finish_benchmark,
    load_suite,
    paper_rows,
    rows_csv,
    rows_markdown,
    run_benchmark,
    set_aside,
    stale_reason,
)
from pixelqa.locks import folder_lock

# command-line options of the suite form (everything else is a recipe key)
SUITE_KEYS: tuple[str, ...] = ("suite", "suite.only", "suite.max_new_tokens", "suite.fresh")
# model settings that do not change an evaluation's numbers (training only), left out of the fingerprint
TRAINING_ONLY: tuple[str, ...] = ("model.loss.", "model.gradient_checkpointing")
# the files of a model folder (`model.path`) whose content the fingerprint holds
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth")
CONFIG = "config.json"
LOCK_ADVICE = "wait for it to finish, or score into another output_dir"


def file_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a file (a checkpoint), None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_sha256(path: str | Path | None) -> dict[str, str] | None:
    """SHA-256 of a model folder's weight files and config.json, keyed by file name; None when there is no folder."""
    if path is None or not Path(path).is_dir():
        return None
    # the files a model is built from (the loaders read the folder's top level only): the tokenizer and processor
    # files are left out, so that hashing costs what reading the weights once does
    files = [p for p in Path(path).iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == CONFIG)]
    return {p.name: file_sha256(p) or "" for p in sorted(files)}


def weights_fingerprint(model_path: str | None, sam_checkpoint: str | None) -> dict[str, Any]:
    """The content of the weights a model is built from besides `ckpt=`: `model.path`'s files and the SAM
    checkpoint (a folder re-exported in place keeps its path, not its hashes)."""
    return {
        "model.path_sha256": folder_sha256(model_path),
        "model.mask_decoder.checkpoint_sha256": file_sha256(sam_checkpoint),
    }


def generation_route() -> str:
    """How answers will be generated: `predictor` when the inference API imports, else `chat` (the stand-in)."""
    try:  # the import default_answer_fn tries: both routes answer differently
        from pixelqa.predict import Predictor, media_from_tensor  # noqa: F401
    except ImportError:
        return "chat"
    return "predictor"


def model_size(preset: str) -> str | None:
    """'3b' / '7b' from a model preset name (the key of the paper's values), None for other presets."""
    for size in ("3b", "7b"):
        if preset.endswith(size):
            return size
    return None


def dist_info() -> tuple[int, int]:
    """(rank, world size) of torch.distributed when initialised, else from the torchrun environment, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    """A barrier when torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ranks_ok(ok: bool) -> bool:
    """Whether `ok` holds on every rank (an all-reduce when torch.distributed is initialised, else `ok`)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return ok
    # NCCL reduces CUDA tensors only: this rank's device, the one its model goes to
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if dist.get_backend() == "nccl" else "cpu"
    failed = torch.tensor([0 if ok else 1], device=device)
    dist.all_reduce(failed)
    return int(failed.item()) == 0


@contextmanager
def results_lock(out: Path, rank: int) -> Iterator[None]:
    """Hold the suite's results folder `out` for this run: another run writing it (records of another checkpoint
    appended to the same files, a result.json built from both) raises SuiteError naming it. Rank 0 takes the lock
    (the ranks of one run share the folder: each its own records file); every rank then learns whether it got it,
    so that no rank of a refused run reads or writes a file there."""
    refused: SuiteError | None = None
    with ExitStack() as held:
        if rank == 0:
            try:
                held.enter_context(folder_lock(out, "suite", LOCK_ADVICE, error=SuiteError))
            except SuiteError as err:
                refused = err
        if not all_ranks_ok(refused is None):
            raise refused or SuiteError(f"{out} is in use by another run (its lock refused rank 0); {LOCK_ADVICE}")
        yield


def run_fingerprint(
    flat_recipe: dict[str, Any],
    ckpt_sha256: str | None,
    max_new_tokens: int | None,
    weights: dict[str, Any] | None = None,
    route: str | None = None,
) -> dict:
    """The run's part of a benchmark fingerprint: what, besides the benchmark and its shards, sets the numbers
    (`weights`: `weights_fingerprint`; `route`: `generation_route`)."""
    model = {k: v for k, v in flat_recipe.items() if k.startswith("model.") and not k.startswith(TRAINING_ONLY)}
    return {
        "checkpoint_sha256": ckpt_sha256,
        **(weights or {}),
        **model,
        "stage": flat_recipe.get("stage"),
        "seed": flat_recipe.get("seed"),
        "max_new_tokens_cap": max_new_tokens,
        "generation_route": route,
    }


def check_stale(
    specs: Sequence[Any],
    shards: str | Path,
    out: str | Path,
    fingerprint: dict[str, Any],
    limit: int | None,
    fresh: bool,
    rank: int = 0,
) -> list[Path]:
    """Before any work: benchmarks whose stored result or records were made under another fingerprint raise
    SuiteError (the first one's reason), or with `fresh` are moved aside by rank 0; returns the new folders."""
    moved: list[Path] = []
    if fresh and rank != 0:  # rank 0 alone reads and moves the folders (no reads racing the renames)
        barrier()
        return moved
    stale = [(spec, stale_reason(spec, out, benchmark_fingerprint(spec, shards, fingerprint, limit))) for spec in specs]
    stale = [(spec, reason) for spec, reason in stale if reason]
    if stale and not fresh:  # every rank sees the same files and stops alike
        more = f" (and {len(stale) - 1} more benchmarks)" if len(stale) > 1 else ""
        raise SuiteError(stale[0][1] + more)
    if fresh:
        for spec, _ in stale:
            moved.append(set_aside(Path(out) / spec.name))
            print(f"suite.fresh=true: moved {Path(out) / spec.name} (other settings) to {moved[-1]}")
        barrier()  # the other ranks start once the stale folders are gone
    return moved


def run_suite_benchmarks(
    suite: Suite,
    answer_fn: Callable[[Any], Any],
    shards: str | Path,
    out: str | Path,
    provenance: dict[str, Any],
    limit: int | None = None,
    only: Sequence[str] | None = None,
    fingerprint: dict[str, Any] | None = None,
    strict: bool = False,
) -> tuple[dict[str, BenchmarkResult], list[str]]:
    """Run every benchmark with shards on this rank, merge on rank 0; returns (results on rank 0, skip lines).
    `fingerprint` (the run's part, `run_fingerprint`) is stored with records and results; stale ones raise.
    `strict` (data.strict): a damaged record stops the run instead of being skipped and counted."""
    rank, world = dist_info()
    results: dict[str, BenchmarkResult] = {}
    skipped: list[str] = []
    for spec in suite.benchmarks:
        if only and spec.name not in only:
            continue
        reason = benchmark_shards_missing(spec, shards)
        if reason:
            skipped.append(reason)
            if rank == 0:
                print(f"skipped {reason}")
            continue
        if rank == 0:
            print(f"running {spec.name} ({spec.source}/{spec.split}, protocol {spec.protocol})")
        noted = getattr(answer_fn, "departures", None)
        if isinstance(noted, set):
            noted.clear()  # per benchmark
        run_benchmark(
            spec, answer_fn, shards, out, rank=rank, world=world, limit=limit, fingerprint=fingerprint, strict=strict
        )
        barrier()
        if rank == 0:
            record = {**provenance, "departures": sorted(noted) if isinstance(noted, set) else []}
            result = finish_benchmark(spec, shards, out, record, limit=limit, fingerprint=fingerprint, strict=strict)
            results[spec.name] = result
            damaged = result.provenance.get("damaged_records")
            if damaged:
                print(
                    f"WARNING: {spec.name} is scored on {result.provenance.get('samples')} of "
                    f"{result.provenance.get('samples_expected')} samples ({damaged} damaged records left out); the "
                    "table marks it a subset, and a rerun scores whatever the shards then hold (rebuild them first)"
                )
        barrier()
    return results, skipped


def child_counts(name: str, result: BenchmarkResult) -> dict[str, float]:
    """Samples scored / expected and damaged records of a finished benchmark, named as a single evaluation logs them."""
    prov = result.provenance or {}
    scored = prov.get("samples")
    expected = prov.get("samples_expected", scored)
    out = {}
    if scored is not None:
        out[f"{name}/samples_scored"] = float(scored)
    if expected is not None:
        out[f"{name}/samples_expected"] = float(expected)
    out["data/damaged_records"] = float(prov.get("damaged_records") or 0)
    return out


def child_params(result: BenchmarkResult) -> dict[str, str]:
    """What scored a benchmark, as MLflow params of its child run: protocol, shards, checkpoint, generation, cap."""
    prov = result.provenance or {}
    keys = ("protocol", "source", "split", "checkpoint", "model_preset", "model_path", "generation", "seed")
    out = {k: str(prov[k])[:500] for k in keys if prov.get(k) is not None}
    out["scoring"] = "official protocol, free generation"
    out["max_new_tokens_cap"] = str(prov.get("max_new_tokens_cap"))
    return out


def log_mlflow(tracking: Any, suite: Suite, results: dict[str, BenchmarkResult], table: list[dict], out: Path) -> str:
    """A parent run for the suite (paper table as an MLflow table and CSV/Markdown) and a child per benchmark."""
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    from pixelqa import tracking as tr

    parent = tr.start_parent_run(f"suite:{suite.name}", tracking, tags={"pixelqa.suite": suite.name})
    uri, _ = tr.resolve_uris(tracking)
    client = MlflowClient(tracking_uri=uri)
    exp_id = tr.prepare_store(tracking)
    for name, result in results.items():
        tags = {MLFLOW_RUN_NAME: f"eval-{name}", tr.PARENT_TAG: parent, "benchmark": name, **tr.owner_tags()}
        child = client.create_run(exp_id, tags=tags).info.run_id
        for key, value in result.metrics.items():
            client.log_metric(child, tr.mlflow_key(f"{name}/{key}"), float(value))
        for key, value in child_counts(name, result).items():  # a subset must not pass for a whole benchmark
            client.log_metric(child, tr.mlflow_key(key), value)
        for key, value in child_params(result).items():
            client.log_param(child, key, value)
        client.log_dict(child, result.provenance, "provenance.json")
        client.log_text(child, rows_markdown(result.rows), f"tables/{name}.md")
        client.log_text(child, rows_csv(result.rows), f"tables/{name}.csv")
        client.set_terminated(child, "FINISHED")
    if table:
        client.log_table(parent, {k: [r[k] for r in table] for k in table[0]}, "paper_table.json")
    for f in ("paper_table.md", "paper_table.csv", "provenance.json"):
        if (out / f).is_file():
            client.log_artifact(parent, str(out / f))
    tr.end_run(parent, tracking)
    return parent


def run_suite(args: list[str]) -> dict[str, float]:
    """The `suite=NAME` form of `pixelqa.evaluate`; returns {"<benchmark>/<metric>": value} (rank 0). A SuiteError
    from any step (a suite file, stale or damaged records, a merge that finds a sample missing) is a RecipeError:
    the CLI prints it as one line and exits 2."""
    from pixelqa.config import RecipeError

    try:
        with ExitStack() as held:  # the results folder's lock (`results_lock`), until the run ends
            return _run_suite(args, held)
    except SuiteError as err:
        raise RecipeError(str(err)) from None


def _run_suite(args: list[str], held: ExitStack) -> dict[str, float]:
    """`run_suite` itself, holding its results folder's lock in `held`; SuiteErrors propagate."""
    import torch

    import pixelqa
    from pixelqa.config import RecipeError, flatten, load_recipe, to_object
    from pixelqa.eval.generation import default_answer_fn
    from pixelqa.eval.model_loading import load_model, resolve_eval_ckpt, settle_model_settings
    from pixelqa.preflight import check_launcher, check_writable

    names = [a.split("=", 1)[1] for a in args if a.startswith("suite=")]
    rest = [a for a in args if not a.startswith("suite")]
    only = [n for a in args if a.startswith("suite.only=") for n in a.split("=", 1)[1].split(",") if n]
    caps = [a.split("=", 1)[1] for a in args if a.startswith("suite.max_new_tokens=")]
    fresh_args = [a.split("=", 1)[1].lower() for a in args if a.startswith("suite.fresh=")]
    unknown = [a for a in args if a.startswith("suite") and a.split("=", 1)[0] not in SUITE_KEYS]
    if unknown:
        raise RecipeError(f"{unknown[0]}: unknown suite option, expected one of {list(SUITE_KEYS)}")
    if caps and not (caps[-1].isdigit() and int(caps[-1]) > 0):  # 0 would read as "no cap" downstream
        raise RecipeError(f"suite.max_new_tokens: got {caps[-1]!r}, expected a positive integer")
    if fresh_args and fresh_args[-1] not in ("true", "false"):
        raise RecipeError(f"suite.fresh: got {fresh_args[-1]!r}, expected true or false")
    fresh = bool(fresh_args) and fresh_args[-1] == "true"
    max_new_tokens = int(caps[-1]) if caps else None
    suite = load_suite(names[-1])
    known = [s.name for s in suite.benchmarks]
    misspelt = [n for n in only if n not in known]
    if misspelt:  # a dropped name would silently leave a benchmark out of the table
        raise RecipeError(f"suite.only: got {misspelt[0]!r}, expected names of suite {suite.name}: {known}")
    cfg = load_recipe(rest)
    recipe = to_object(cfg)
    check_launcher(recipe)  # the suite runs in this process, as a single evaluation does
    # records, results and tables go there: an unwritable folder is one line now, not a traceback after the model
    # has loaded and the first sample has been generated
    check_writable(recipe.output_dir, "output_dir")
    ckpt_path = resolve_eval_ckpt(recipe.ckpt, recipe.output_dir)
    # the model trained (the checkpoint's model config), not the recipe's defaults: the fingerprint records it
    # the fingerprint, provenance and MLflow record the model scored, not the recipe's defaults
    recipe = settle_model_settings(cfg, rest, ckpt_path, "provenance.json", speak=dist_info()[0] == 0)
    shards = recipe.data.shards
    runnable = [
        s for s in suite.benchmarks if (not only or s.name in only) and benchmark_shards_missing(s, shards) is None
    ]
    if not runnable:
        lines = [benchmark_shards_missing(s, shards) for s in suite.benchmarks if not only or s.name in only]
        raise RecipeError(f"suite={suite.name}: no benchmark has shards under {shards}; first: {lines[0]}")
    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    out = Path(recipe.output_dir) / f"suite-{suite.name}"
    # before anything reads or writes the folder (the stale check, set_aside, records): one run at a time
    held.enter_context(results_lock(out, rank))
    ckpt_sha256 = file_sha256(ckpt_path)
    weights = weights_fingerprint(recipe.model.path, recipe.model.mask_decoder.checkpoint)
    route = generation_route()
    fingerprint = run_fingerprint(flatten(cfg), ckpt_sha256, max_new_tokens, weights, route)
    # before the model loads: a refused rerun costs seconds
    check_stale(runnable, shards, out, fingerprint, recipe.eval.max_samples, fresh, rank)
    torch.manual_seed(recipe.seed)
    model = load_model(recipe, ckpt_path)
    if torch.cuda.is_available() and recipe.trainer.accelerator in ("gpu", "cuda", "auto"):
        model = model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    answer_fn, generation = default_answer_fn(model, max_new_tokens)
    if ("Predictor" in generation) != (route == "predictor"):  # the route taken is not the one checked: check it
        route = "predictor" if "Predictor" in generation else "chat"
        fingerprint = {**fingerprint, "generation_route": route}
        check_stale(runnable, shards, out, fingerprint, recipe.eval.max_samples, fresh, rank)
    if rank == 0:
        print(
            f"PixelQA evaluate suite={suite.name}: {len(runnable)} of {len(suite.benchmarks)} benchmarks; {generation}"
        )
    provenance = {
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "checkpoint_sha256": ckpt_sha256,
        **weights,
        "model_preset": recipe.model.preset,
        "model_path": recipe.model.path,
        "recipe": flatten(cfg),
        "seed": recipe.seed,
        "generation": generation,
        "judge": None,
        "max_new_tokens_cap": max_new_tokens,
        "pixelqa_version": getattr(pixelqa, "__version__", "unknown"),
        "world_size": world,
    }
    results, skipped = run_suite_benchmarks(
        suite, answer_fn, shards, out, provenance, recipe.eval.max_samples, only, fingerprint, recipe.data.strict
    )
    if rank != 0:
        return {}
    table = paper_rows(suite.benchmarks, results, model_size(recipe.model.preset))
    (out / "paper_table.md").write_text(rows_markdown(table))
    (out / "paper_table.csv").write_text(rows_csv(table))
    _write_json(out / "provenance.json", {"suite": suite.name, "skipped": skipped, **provenance})
    if recipe.tracking.enabled:
        log_mlflow(recipe.tracking, suite, results, table, out)
    print(rows_markdown(table), end="")
    for line in skipped:
        print(f"skipped {line}")
    metrics = {f"{n}/{k}": v for n, r in results.items() for k, v in r.metrics.items()}
    print(f"\n==== PixelQA evaluate suite={suite.name} ({len(results)} benchmarks, {len(skipped)} skipped) ====")
    print(json.dumps(metrics, indent=1))
    return metrics
