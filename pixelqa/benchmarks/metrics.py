"""Benchmark: DAVIS J / F / J&F, our torch implementation against the per-frame numpy/OpenCV reference port.

Both run on the same clips in one process: the DAVIS 2017 result masks in ``shared/data/davis2017-results`` when
present (each OSVOS object against the RVOS object overlapping it most on frame 0), else a synthetic 480x854 clip of
50 frames with moving ellipses. Results are checked equal (1e-6) before timing. The last lines are the headline
figures, one per line.

    python -m pixelqa.bench metrics [--device cuda] [--threads 1,0] [--repeats 3] [--synthetic]

Ours is timed once per torch intra-op thread count in ``--threads`` (default ``1,0``: one thread, then torch's
default, which is what a user gets); the reference is single-threaded numpy/OpenCV in both. Headline lines:
``jandf_time_ratio_threads1: 0.14`` (our time / the reference's, lower is better) and the matching speed-ups.
Each repeat times the reference and ours back to back and the best of each is kept, so load from other processes
on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pixelqa.benchmarks import argument_error, check_common
from pixelqa.benchmarks.davis_reference import (
    reference_boundary_f,
    reference_jaccard,
    reference_statistics,
)
from pixelqa.metrics import JAndF, boundary_f, jaccard

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "davis2017-results"


def synthetic_clip(frames: int = 50, height: int = 480, width: int = 854, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A moving-ellipse target clip and a prediction that drifts and deforms around it: two (T, H, W) bool arrays."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    target = np.zeros((frames, height, width), dtype=bool)
    preds = np.zeros_like(target)
    for t in range(frames):
        cx, cy = 200 + 8 * t, 240 + 60 * np.sin(t / 8)
        target[t] = ((xx - cx) / 120) ** 2 + ((yy - cy) / 80) ** 2 <= 1
        px, py = cx + rng.normal(0, 6), cy + rng.normal(0, 6)
        preds[t] = ((xx - px) / (115 + 10 * np.sin(t))) ** 2 + ((yy - py) / 85) ** 2 <= 1
        preds[t] |= ((xx - 650 + 4 * t) / 40) ** 2 + ((yy - 100) / 30) ** 2 <= 1  # a false-positive blob
    return preds, target


def davis_clips(root: Path, sequences: list[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, preds, target) for every OSVOS object of every sequence (or of ``sequences``) under ``root``."""
    from PIL import Image

    def load(method: str, sequence: str) -> np.ndarray:
        return np.stack([np.array(Image.open(p)) for p in sorted((root / method / sequence).glob("*.png"))])

    clips = []
    names = sorted(p.name for p in (root / "osvos").iterdir() if p.is_dir()) if sequences is None else sequences
    for sequence in names:
        osvos, rvos = load("osvos", sequence), load("rvos", sequence)
        for obj in (int(i) for i in np.unique(osvos) if i != 0):
            target = osvos == obj
            best = max((i for i in np.unique(rvos) if i != 0), key=lambda i: int((target[0] & (rvos[0] == i)).sum()))
            clips.append((f"{sequence}/{obj}", rvos == best, target))
    return clips


def _best_times(fns: list[Callable[[], object]], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Best wall time in seconds of each function over ``repeats`` rounds that run them in turn (after a warm-up)."""
    best = [float("inf")] * len(fns)
    for round_index in range(repeats + 1):
        for index, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            sync()
            if round_index:  # round 0 is the warm-up
                best[index] = min(best[index], time.perf_counter() - start)
    return best


def _thread_counts(text: str, default: int) -> list[int]:
    """Parse ``--threads`` ("1,0"): positive counts, 0 meaning torch's default; exits 2 on anything else."""
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        counts = [-1]
    if not counts or min(counts) < 0:
        print(
            f"--threads must be a comma-separated list of counts >= 0 (0: torch's default), got {text!r}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return [count or default for count in counts]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench metrics`."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.bench metrics", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cpu", help="device for our implementation (cpu, cuda, cuda:1, ...) (default %(default)s)"
    )
    parser.add_argument(
        "--threads",
        default="1,0",
        help="torch intra-op thread counts to time ours with, comma-separated (0: torch's default; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement, the best kept (default %(default)s)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="DAVIS 2017 result masks (osvos/ and rvos/); default: the shared copy, else the synthetic clip",
    )
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic ellipse clip even if data exists")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table, then the headline speedups as the last lines."""
    args = build_parser().parse_args(argv)

    import cv2

    default_threads = torch.get_num_threads()
    thread_counts = _thread_counts(args.threads, default_threads)
    check_common(args)
    if args.data is not None and not all((args.data / d).is_dir() for d in ("osvos", "rvos")):
        argument_error(f"--data: {str(args.data)!r} lacks osvos/ or rvos/; expected the DAVIS 2017 result masks")
    cv2.setNumThreads(1)  # the reference as published: one thread
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    data = args.data or DEFAULT_DATA
    if data.is_dir() and not args.synthetic:
        clips = davis_clips(data)
        source = f"DAVIS 2017 results ({len(clips)} object clips, {sum(c[1].shape[0] for c in clips)} frames)"
    else:
        clips = [("ellipses", *synthetic_clip())]
        source = "synthetic moving ellipses (1 clip, 50 frames, 480x854)"
    torch_clips = [(torch.from_numpy(p).to(device), torch.from_numpy(t).to(device)) for _, p, t in clips]

    # Equality first: a fast wrong answer is no result.
    worst = 0.0
    for (_, p, t), (tp, tt) in zip(clips, torch_clips):
        worst = max(worst, float(np.abs(jaccard(tp, tt).cpu().numpy() - reference_jaccard(t, p)).max()))
        worst = max(worst, float(np.abs(boundary_f(tp, tt).cpu().numpy() - reference_boundary_f(t, p)).max()))
    if worst > 1e-6:
        raise SystemExit(f"results differ from the reference by {worst:.3g} (> 1e-6): not timing")

    def ref_j() -> None:
        for _, p, t in clips:
            reference_jaccard(t, p)

    def ref_f() -> None:
        for _, p, t in clips:
            reference_boundary_f(t, p)

    def ref_jandf() -> None:
        j_means, f_means = [], []
        for _, p, t in clips:
            j_means.append(reference_statistics(np.asarray(reference_jaccard(t, p)))[0])
            f_means.append(reference_statistics(reference_boundary_f(t, p))[0])
        (np.mean(j_means) + np.mean(f_means)) / 2

    def ours_j() -> None:
        for tp, tt in torch_clips:
            jaccard(tp, tt)

    def ours_f() -> None:
        for tp, tt in torch_clips:
            boundary_f(tp, tt)

    def ours_jandf() -> None:
        metric = JAndF().to(device)
        for tp, tt in torch_clips:
            metric.update(tp, tt)
        metric.compute()

    results = []  # (threads, [(name, reference s, ours s)])
    for threads in thread_counts:
        torch.set_num_threads(threads)
        times = _best_times([ref_j, ours_j, ref_f, ours_f, ref_jandf, ours_jandf], args.repeats, sync)
        names = ("jaccard", "boundary_f", "jandf")
        results.append((threads, [(name, times[2 * i], times[2 * i + 1]) for i, name in enumerate(names)]))
    torch.set_num_threads(default_threads)

    print(f"clips: {source}")
    print(
        f"reference: numpy/OpenCV per frame on cpu, 1 thread; ours: torch on {device} "
        f"(torch's default threads here: {default_threads}; max abs difference {worst:.1e})"
    )
    print(f"{'metric':<12} {'threads':>7} {'reference ms':>13} {'ours ms':>9} {'time ratio':>10} {'speedup':>8}")
    for threads, rows in results:
        for name, ref_s, ours_s in rows:
            print(
                f"{name:<12} {threads:>7} {ref_s * 1e3:>13.1f} {ours_s * 1e3:>9.1f} {ours_s / ref_s:>10.3f} "
                f"{ref_s / ours_s:>7.1f}x"
            )
    for threads, rows in results:
        label = f"threads{threads}" + ("_default" if threads == default_threads and threads != 1 else "")
        for name, ref_s, ours_s in rows:
            print(f"{name}_time_ratio_{label}: {ours_s / ref_s:.3f}")
            print(f"{name}_speedup_{label}: {ref_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
