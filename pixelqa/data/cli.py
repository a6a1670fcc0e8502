"""python -m pixelqa.data build|inspect|stats|mixture|sources|cards

build SOURCE --root RAW --out SHARDS [--split S] [--workers N] [--on-error fail|skip]
      [--node-rank R --num-nodes N] [--max-samples N] [--max-count N] [--max-bytes N]
      [--no-check-frames] [--quiet] [--wait] [--frame-codec keep|jpg|png|ppm]
inspect SHARDS [--n 4] [--out DIR] [--strict]  print samples and render mask overlays to PNG
stats SHARDS [--strict]                   counts per source / split / task, the builds' rejects (from the manifests)
                                          and damaged records found reading (counted, or with --strict fatal); a
                                          folder whose build has not finished is marked INCOMPLETE
mixture recipe=sft1m [--shards SHARDS]    print the weighted mixture of a recipe (paper Table 12)
mixture recipe=sft1m --root RAW --out SHARDS [--roots NAME=PATH ...] [--workers N] [--on-error fail|skip]
      [--frame-codec keep|jpg|png|ppm]    build every source of the mixture (resumable), write its spec
sources / cards                           list registered converters / dataset cards

build and mixture also take `launcher=subprocess|slurm [launcher.KEY=VALUE ...]`: --num-nodes N array tasks
and a final verify job (see docs/cluster.md)

Expected failures (damaged data with --on-error fail, a folder from a different build or from raw files that changed
since, missing raw files, shard paths or shard files, an --out that cannot be written, a full disk, a bad recipe or
option value) print one line `error: ...` and exit 2; Ctrl-C exits 130
(build and mixture: rerun the same command to resume); a closed stdout pipe (`... | head`) exits 141 silently.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pixelqa.data.schema import FRAME_CODECS  # the package imports the schema anyway


class UsageError(ValueError):
    """A command-line value that cannot be used; the message names the option, the value and what was expected."""


def check_out(out: str | Path) -> None:
    """--out can be written (fit's preflight check): one `error:` line and status 2 before any work, not an OSError
    traceback from the first shard."""
    from pixelqa.config import RecipeError
    from pixelqa.data.shards import BuildInputError
    from pixelqa.preflight import check_writable

    try:
        check_writable(out, "--out")
    except RecipeError as err:
        raise BuildInputError(str(err)) from None


def _build(args: argparse.Namespace) -> None:
    from pixelqa.data.shards import build_shards

    check_out(args.out)
    m = build_shards(
        args.source,
        args.root,
        args.out,
        split=args.split,
        workers=args.workers,
        on_error=args.on_error,
        node_rank=args.node_rank,
        num_nodes=args.num_nodes,
        max_samples=args.max_samples,
        max_count=args.max_count,
        max_bytes=args.max_bytes,
        check_frames=not args.no_check_frames,
        progress=not args.quiet,
        wait=args.wait,
        frame_codec=args.frame_codec,
    )
    print(
        f"{m['source']}/{m['split']}: {m['num_samples']} samples in {len(m['shards'])} shards, "
        f"{m['num_bytes'] / 2**20:.1f} MiB, {m['num_rejects']} rejected"
    )
    for r in m["rejects"][:20]:
        print(f"  rejected item {r['item']} sample {r['offset']} ({r['key']}): {r['reason']}")


def _inspect(args: argparse.Namespace) -> None:
    from pixelqa.data.inspect_shards import inspect_shards

    if args.n < 1:
        raise UsageError(f"--n: got {args.n}, expected >= 1 (samples to print)")
    if args.out is not None:
        check_out(args.out)
    inspect_shards(args.shards, n=args.n, out=args.out, strict=args.strict)


def build_rejects(paths: list[str]) -> dict[tuple[str, str], dict]:
    """Rejects and skipped items the builds recorded, per (source, split): {count, skipped, manifests, examples}
    from the folders' manifests."""
    import json

    found: set[Path] = set()
    for p in map(Path, paths):  # a manifest sits in its shard folder, beside the shards (if the build wrote any)
        found.update(
            m.resolve() for m in (p.rglob("manifest*.json") if p.is_dir() else p.parent.glob("manifest*.json"))
        )
    out: dict[tuple[str, str], dict] = {}
    for mp in sorted(found):
        try:
            m = json.loads(mp.read_text())
            entry = out.setdefault(
                (str(m["source"]), str(m["split"])), {"count": 0, "skipped": 0, "manifests": [], "examples": []}
            )
            entry["count"] += int(m.get("num_rejects", len(m.get("rejects", []))))
            entry["skipped"] += int(m.get("num_skipped", len(m.get("skipped", []))))
            entry["manifests"].append(str(mp))
            examples = [*m.get("rejects", []), *m.get("skipped", [])]  # rejects first: they are the damage
            entry["examples"].extend(examples[: 3 - len(entry["examples"])])
        except (OSError, ValueError, KeyError, TypeError) as err:  # a stats reader does not stop at one bad manifest
            msg = f"warning: manifest {mp} unreadable ({type(err).__name__}: {err}); its build rejects are not counted"
            print(msg, file=sys.stderr)
    return out


def _stats(args: argparse.Namespace) -> None:
    from pixelqa.data.inspect_shards import print_counts, shard_stats

    rejects = build_rejects(args.shards)
    try:
        st = shard_stats(args.shards, args.strict)
    except FileNotFoundError:
        if not rejects or not all(Path(p).is_dir() for p in args.shards):  # nothing built there at all
            raise
        # A build that rejected everything wrote no shard, only its manifest: its rejects are still worth showing.
        st = {
            "samples": 0,
            "bytes": 0,
            "per_source": {},
            "per_task": {},
            "mean_frames": 0,
            "mean_objects": 0,
            "damaged": 0,
        }
    print_counts(st)
    total = sum(e["count"] for e in rejects.values())
    skips = sum(e["skipped"] for e in rejects.values())
    # Two different losses: records the build refused (never written, recorded in its manifest) and records
    # written but found damaged now, while reading the shards.
    unfinished = len(st.get("unfinished", {}))
    builds = f"{unfinished} unfinished build{'s' * (unfinished > 1)}"
    incomplete = f" (INCOMPLETE: {builds}, see above)" if unfinished else ""
    print(
        f"samples: {st['samples']}{incomplete}  bytes: {st['bytes']:,}  mean frames: {st['mean_frames']:.2f}  "
        f"mean objects: {st['mean_objects']:.2f}  damaged records skipped: {st['damaged']} (while reading the shards)  "
        f"rejected by the build: {total}  skipped by the build (nothing to ask): {skips}"
    )
    if total or skips:
        print(
            f"{'build rejects':32s} {'split':10s} {'rejects':>9s} {'skipped':>9s}  (key + reason of each: 'rejects' "
            "and 'skipped' in the manifest)"
        )
        for (src, split), e in sorted(rejects.items()):
            if e["count"] or e["skipped"]:
                print(f"{src:32s} {split:10s} {e['count']:9d} {e['skipped']:9d}  {', '.join(e['manifests'])}")
                for r in e["examples"]:
                    print(f"  {r.get('key')}: {' '.join(str(r.get('reason')).split())[:200]}")


def _mixture(args: argparse.Namespace) -> None:
    from pixelqa.data.mixture import load_mixture, print_mixture

    recipe = args.recipe.split("=", 1)[1] if args.recipe.startswith("recipe=") else args.recipe
    entries = load_mixture(recipe)
    if args.out is None:
        print_mixture(entries, shards_root=args.shards)
        return
    from pixelqa.data.mixture import MixtureError, build_mixture, parse_roots, write_mixture_spec

    if args.root is None:
        raise MixtureError(
            "--out: needs --root RAW, expected the raw root (each source is read from RAW/<source>, or "
            "from its --roots NAME=PATH)"
        )
    roots = parse_roots(args.roots)
    check_out(args.out)
    build_mixture(
        entries,
        args.root,
        args.out,
        roots=roots,
        workers=args.workers,
        on_error=args.on_error,
        node_rank=args.node_rank,
        num_nodes=args.num_nodes,
        max_samples=args.max_samples,
        progress=not args.quiet,
        frame_codec=args.frame_codec,
    )
    print_mixture(entries, shards_root=args.out)
    name = Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe
    print(f"mixture spec: {write_mixture_spec(name, entries, args.out)}")


def _sources(args: argparse.Namespace) -> None:
    from pixelqa.data.catalog import list_sources

    print("\n".join(list_sources()))


def _cards(args: argparse.Namespace) -> None:
    from pixelqa.data.registry import list_cards, load_card

    for name in list_cards():
        c = load_card(name)
        stages = " ".join(f"{k}x{v.repeat}" for k, v in c.stages.items())
        print(f"{c.name:32s} {','.join(c.tasks):40s} {c.license:24s} {stages}")


# options build and mixture share
WORKERS = {"default": 1, "help": "converter processes on this node (default %(default)s)"}
ON_ERROR = {
    "default": "fail",
    "help": "fail: a rejected sample (damaged raw data) stops the build; skip: it is left out and recorded in the "
    "manifest (default %(default)s)",
}
NODE_RANK = {"default": 0, "help": "this node's part of a build split over --num-nodes (default %(default)s)"}
NUM_NODES = {"default": 1, "help": "nodes the build is split over, each with its own --node-rank (default %(default)s)"}


def parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m pixelqa.data`."""
    p = argparse.ArgumentParser(
        prog="python -m pixelqa.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    launch = (
        "launcher=subprocess|slurm [launcher.KEY=VALUE ...] (anywhere on the line): submit the build as --num-nodes N "
        "array tasks plus a final verify job instead of building here, e.g. launcher=slurm launcher.partition=cpu "
        "launcher.gpus_per_node=0 launcher.time_min=720; keys and SLURM requirements: docs/cluster.md"
    )
    b = sub.add_parser("build", help="convert a raw source into shards", epilog=launch)
    b.add_argument("source")
    b.add_argument(
        "--root", default=".", help="raw files as downloaded (see datasets/<source>.yaml) (default %(default)s)"
    )
    b.add_argument("--out", required=True, help="shard root; shards go to OUT/<source>/<split>/")
    b.add_argument("--split", default="train", help="the source's split to convert (default %(default)s)")
    b.add_argument("--workers", type=int, **WORKERS)
    b.add_argument("--on-error", choices=("fail", "skip"), **ON_ERROR)
    b.add_argument("--node-rank", type=int, **NODE_RANK)
    b.add_argument("--num-nodes", type=int, **NUM_NODES)
    b.add_argument("--max-samples", type=int, default=None, help="at most this many samples (per node)")
    b.add_argument("--max-count", type=int, default=1000, help="samples per shard (default %(default)s)")
    b.add_argument("--max-bytes", type=int, default=256 * 2**20, help="bytes per shard (default %(default)s: 256 MiB)")
    b.add_argument("--no-check-frames", action="store_true", help="validate without decoding every frame")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--wait", action="store_true", help="wait for another build of these shards instead of failing")
    codec = {
        "choices": FRAME_CODECS,
        "default": "keep",
        "help": "frames as released (keep) or re-encoded; ppm stores decoded pixels: several times the bytes, the "
        "fastest loader (small frames) (default %(default)s)",
    }
    b.add_argument("--frame-codec", **codec)
    b.set_defaults(fn=_build)
    i = sub.add_parser("inspect", help="print samples and render mask overlays")
    i.add_argument("shards", help="a shard folder, a shard root or .tar files", nargs="+")
    i.add_argument("--n", type=int, default=4, help="samples to print (default %(default)s)")
    i.add_argument("--out", default=None, help="folder for overlay PNGs")
    i.add_argument("--strict", action="store_true", help="any damaged shard data is fatal")
    i.set_defaults(fn=_inspect)
    s = sub.add_parser("stats", help="counts per source / split / task")
    s.add_argument("shards", nargs="+")
    s.add_argument("--strict", action="store_true", help="any damaged shard data is fatal")
    s.set_defaults(fn=_stats)
    m = sub.add_parser("mixture", help="print (or, with --out, build) a data mixture", epilog=launch)
    m.add_argument("recipe", help="recipe=NAME or NAME (recipes/data/NAME.yaml)")
    m.add_argument("--shards", default=None, help="shard root: use manifest sample counts")
    m.add_argument("--root", default=None, help="raw root: source NAME is read from ROOT/NAME")
    m.add_argument("--roots", nargs="*", default=[], help="NAME=PATH raw roots that differ from ROOT/NAME")
    m.add_argument("--out", default=None, help="build every source into this shard root")
    m.add_argument("--workers", type=int, **WORKERS)
    m.add_argument("--on-error", choices=("fail", "skip"), **ON_ERROR)
    m.add_argument("--node-rank", type=int, **NODE_RANK)
    m.add_argument("--num-nodes", type=int, **NUM_NODES)
    m.add_argument("--max-samples", type=int, default=None)
    m.add_argument("--quiet", action="store_true")
    m.add_argument("--frame-codec", **codec)
    m.set_defaults(fn=_mixture)
    sub.add_parser("sources", help="list registered converters").set_defaults(fn=_sources)
    sub.add_parser("cards", help="list dataset cards").set_defaults(fn=_cards)
    return p


# Ctrl-C: what a stopped command leaves behind, by command (build and mixture resume from their complete shards).
STOPPED = {
    "build": "build stopped (Ctrl-C); the complete shards are kept: rerun the same command to resume",
    "mixture": "mixture build stopped (Ctrl-C); the complete shards are kept: rerun the same command to resume",
}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell tool whose reader went away (`... | head`)


def user_errors() -> tuple[type[BaseException], ...]:
    """Expected conditions of the data commands, reported as one line: damaged shards, held locks, failed or
    refused builds, bad mixtures, missing files (raw data, shard paths)."""
    from pixelqa.data.mixture import MixtureError
    from pixelqa.data.shard_reader import ShardDamageError
    from pixelqa.data.shards import BuildError, BuildInputError

    return (
        ShardDamageError,
        BuildError,
        BuildInputError,
        MixtureError,
        UsageError,
        FileNotFoundError,
        NotADirectoryError,
    )


def guarded(command: str, fn: Callable[[], None]) -> None:
    """Run `fn`; expected failures: `error: <message>` on stderr and status 2, no traceback (likewise Ctrl-C,
    status 130, and a closed stdout pipe, status 141, silent)."""
    try:
        fn()
        sys.stdout.flush()  # a reader that went away surfaces here, not as a traceback at interpreter exit
    except user_errors() as err:
        print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"error: {STOPPED.get(command, f'{command} stopped (Ctrl-C)')}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not report the broken pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)


def run(args: argparse.Namespace) -> None:
    """Run a parsed command in this process (expected failures: one line, status 2; see `guarded`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    guarded(args.command, lambda: args.fn(args))


def main(argv: list[str] | None = None) -> None:
    """`python -m pixelqa.data` without launchers: parse and run here (what each array task of a launch runs)."""
    run(parser().parse_args(sys.argv[1:] if argv is None else list(argv)))
