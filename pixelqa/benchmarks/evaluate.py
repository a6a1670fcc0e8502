"""Evaluation benchmark: `python -m pixelqa.bench evaluate [--preset tiny|unipixel-3b] [--device cpu|cuda]`.

Samples per second of the paper suite's official protocols (`pixelqa.eval.official`), each sample going through
its protocol's request, the inference API (`pixelqa.eval.generation.predictor_answer_fn`: SAM on every requested
frame, forced prefixes, ground-truth memory, the benchmark's pixel budget) and its scoring, on hand-built samples
of each protocol family (video segmentation, GroundMoRe, image RES/REC, VideoRefer-Bench-Q/D, MVBench, PixelQA's
two passes). The baseline in the same run is the `UniPixel.chat` stand-in (SAM on the LLM frames only). A random
model never stops early, so every answer runs to `--new-tokens` (recorded): the figures are per-sample costs at
that answer length, not the official 256/512-token caps.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from pixelqa.benchmarks import argument_error, check_common
from pixelqa.benchmarks.model import build_model
from pixelqa.data import masks as rle_masks
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample, Turn, encode_frame
from pixelqa.eval.official import as_prediction, get_official
from pixelqa.prompt_format import REF, SEG

BENCHMARKS: tuple[str, ...] = (
    "mevis",
    "groundmore",
    "refcoco",
    "videorefer_bench_q",
    "videorefer_bench_d",
    "mvbench",
    "pixelqa",
)


def _media(frames: int, size: int, seed: int) -> Media:
    """`frames` random JPEG frames of size x size (an image when frames == 1)."""
    rng = np.random.default_rng(seed)
    rgb = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    kind = "image" if frames == 1 else "video"
    return Media(kind, [encode_frame(f, "jpg") for f in rgb], (size, size), "jpg", None, list(range(frames)))


def _track(frames: int, size: int, x0: int) -> ObjectTrack:
    """An object: a square a quarter of the frame wide, on every frame."""
    m = np.zeros((size, size), bool)
    m[size // 4 : size // 2, x0 : x0 + size // 4] = True
    return ObjectTrack(masks={t: rle_masks.encode(m) for t in range(frames)})


def make_sample(benchmark: str, frames: int, size: int, seed: int = 0) -> Sample:
    """One sample of `benchmark` in the shards' format (what its converter writes), random frames."""
    n = 1 if benchmark == "refcoco" else frames
    objects = {0: _track(n, size, size // 8), 1: _track(n, size, size // 2)}
    mcq = "What is [0] doing?\nOptions:\n(A) running\n(B) sitting\nAnswer with the option's letter."
    seg_turns = [Turn("user", "q"), Turn("assistant", f"It is {SEG}.", seg_objects=[0])]
    base = dict(key=f"{benchmark}-{seed}", source=benchmark, split="test", media=_media(n, size, seed))
    if benchmark in ("mevis", "groundmore"):
        meta = {"expression": "the left square", "question": "Which square moves first?", "question_type": "Causal"}
        return Sample(**base, task="rvos", objects=objects, turns=seg_turns, meta=meta)
    if benchmark == "refcoco":
        box = [size // 8, size // 4, size // 8 + size // 4, size // 2]
        return Sample(
            **base, task="res", objects=objects, turns=seg_turns, meta={"expression": "left", "box_xyxy": box}
        )
    if benchmark in ("videorefer_bench_q", "mvbench", "videorefer_bench_d"):
        memory = [] if benchmark == "mvbench" else [0]
        text = mcq if benchmark != "mvbench" else mcq.replace("[0]", "the person")
        return Sample(
            **base,
            task="mcq",
            objects=objects,
            turns=[Turn("user", text, memory_objects=memory), Turn("assistant", "B")],
            answer="B",
            choices=["running", "sitting"],
            meta={"key_frame": frames // 2, "question_type": "BQ", "video": "v.mp4", "index": seed},
        )
    if benchmark == "pixelqa":
        key = frames // 2
        prompts = [
            Prompt("point", key, 0, [size * 0.2, size * 0.4]),
            Prompt("box", key, 1, [size / 2, size / 4, size * 0.75, size / 2]),
        ]
        turns = [
            Turn("user", f"What is [0] {REF} doing with [1] {REF}? Please localize the relevant objects with IDs."),
            Turn("assistant", f"[0] {SEG} [1] {SEG}", seg_objects=[0, 1]),
            Turn("user", mcq.replace("[0] doing", "[0] doing with [1]")),
            Turn("assistant", "B"),
        ]
        return Sample(
            **base,
            task="mcq",
            objects=objects,
            turns=turns,
            prompts=prompts,
            answer="B",
            choices=["running", "sitting"],
            meta={"key_frame": key, "question_type": "BQ"},
        )
    raise ValueError(f"benchmark: got {benchmark!r}, expected one of {BENCHMARKS}")


def _sync(device: str) -> None:
    """Wait for the device (CUDA timings)."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_protocol(benchmark: str, answer_fn: Callable, samples: list[Sample], device: str) -> float:
    """Seconds to request, answer and score `samples` through the benchmark's official protocol."""
    protocol = get_official(benchmark)
    _sync(device)
    t0 = time.perf_counter()
    records = []
    for s in samples:
        request = protocol.request(s)
        records.append(protocol.score(s, request, as_prediction(answer_fn(request))))
    protocol.aggregate(records)
    _sync(device)
    return time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench evaluate`."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.bench evaluate")
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "unipixel-3b", "unipixel-7b"],
        help="model size (default %(default)s)",
    )
    ap.add_argument("--path", default=None, help="a local model folder (default: random init of the preset)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on (default %(default)s)")
    ap.add_argument("--samples", type=int, default=2, help="samples per benchmark (default %(default)s)")
    ap.add_argument("--frames", type=int, default=24, help="frames per video sample (default %(default)s)")
    ap.add_argument("--size", type=int, default=None, help="frame size in px (tiny 112, real 448)")
    ap.add_argument(
        "--new-tokens",
        type=int,
        default=8,
        help="answer length (a random model never stops early) (default %(default)s)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU) (default %(default)s)")
    ap.add_argument("--only", default=None, help="comma-separated benchmarks (default: all)")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; the last lines are `name: value`."""
    from pixelqa.eval.generation import chat_answer_fn, predictor_answer_fn

    args = build_parser().parse_args(argv)
    check_common(args)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown:
        argument_error(f"--only: got {unknown}, expected some of {list(BENCHMARKS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size or (112 if args.preset == "tiny" else 448)
    # as built: the LLM in bfloat16 for real presets, SAM and the new modules in float32 (no whole-model cast)
    model = build_model(args.preset, args.device, args.path).eval()
    official = predictor_answer_fn(model, max_new_tokens=args.new_tokens)
    stand_in = chat_answer_fn(model, max_new_tokens=args.new_tokens)
    samples = {b: [make_sample(b, args.frames, size, seed=i) for i in range(args.samples)] for b in names}
    per_bench: dict[str, float] = {}
    with torch.no_grad():
        time_protocol(names[0], official, samples[names[0]][:1], args.device)  # warm-up
        total_official = total_stand_in = 0.0
        for b in names:
            seconds = time_protocol(b, official, samples[b], args.device)
            per_bench[b] = len(samples[b]) / seconds
            total_official += seconds
            total_stand_in += time_protocol(b, stand_in, samples[b], args.device)
    n = sum(len(v) for v in samples.values())
    report = {
        "preset": args.preset,
        "device": args.device,
        "frames": args.frames,
        "size": size,
        "new_tokens": args.new_tokens,
        "samples": n,
        "departures": sorted(getattr(official, "departures", ())),
    }
    print(json.dumps(report))
    for b, sps in per_bench.items():
        print(f"{b}_samples_per_s: {sps:.3f}")
    print(f"chat_stand_in_samples_per_s: {n / total_stand_in:.3f}")
    print(f"official_vs_stand_in_time: {total_official / total_stand_in:.2f}x")
    print(f"suite_samples_per_s: {n / total_official:.3f}")


if __name__ == "__main__":
    main()
