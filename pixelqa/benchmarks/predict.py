"""Inference benchmark: `python -m pixelqa.bench predict [--preset tiny|unipixel-3b] [--device cpu|cuda]`.

Measured in one run on one model: tokens/s of KV-cached greedy generation vs the uncached loop (a full forward per
token) on a prompt of about `--prompt-tokens` tokens; seconds per frame of SAM 2 mask propagation; and the PixelQA
two-pass turn (memory pre-fill of a point prompt + answer) vs a single generate of the same length. Targets: cached
>= 5x uncached on a 500-token prompt; pre-fill + answer <= 1.6x a single generate. The two-pass turn runs the ViT
once, reuses the pre-fill forward's KV cache for the system prompt and the media (`generation.PrefixCache`), and
decodes the pre-filled object's masks with SAM on every frame, work a single generate does not do; the figure
without that SAM decoding is printed apart (on the tiny preset SAM is 20x the LLM's size and dominates).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch
from pixelqa.benchmarks import check_common
from pixelqa.benchmarks.model import build_model

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel


def _clip(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A random uint8 clip (T, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, size, size), generator=g, dtype=torch.uint8)


def _timed(fn, device: str) -> tuple[float, object]:
    """Seconds of one call (synchronised on CUDA) and its result."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def first_difference(model: UniPixel, batch: Batch, cached: list[int], uncached: list[int]) -> dict[str, float]:
    """Where cached and uncached greedy ids part, and how close the two tokens were there.

    Returns the number of identical leading tokens and, where the lists differ, the full forward's logits of the two
    chosen tokens at the first differing step (gap) beside the largest |logit| (scale): in bf16 a gap below about
    scale / 256 is a rounding tie, not a cache error.
    """
    from pixelqa.model.generation import _full_states, append_tokens

    same = next((i for i, (a, b) in enumerate(zip(cached, uncached)) if a != b), min(len(cached), len(uncached)))
    report = {"identical": float(same), "of": float(max(len(cached), len(uncached)))}
    if same < min(len(cached), len(uncached)):
        with torch.no_grad():
            _, post = _full_states(model, append_tokens(batch, cached[:same]) if same else batch)
            logits = model.logits(post[:, -1:])[0, -1].float()
        report["gap"] = float((logits[cached[same]] - logits[uncached[same]]).abs())
        report["scale"] = float(logits.abs().max())
    return report


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench predict`."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.bench predict")
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "unipixel-3b", "unipixel-7b"],
        help="model size (default %(default)s)",
    )
    ap.add_argument("--path", default=None, help="a local model folder (default: random init of the preset)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on (default %(default)s)")
    ap.add_argument(
        "--prompt-tokens",
        type=int,
        default=500,
        help="the prompt is filled up to at least this many tokens (default %(default)s)",
    )
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default %(default)s)")
    ap.add_argument("--frames", type=int, default=8, help="frames of the video (default %(default)s)")
    ap.add_argument("--size", type=int, default=None, help="frame size in px (tiny 112, real 448)")
    # one thread: the tiny model's kernels are too small to share, and on a busy machine a second thread makes every
    # step wait for a descheduled one (2 threads measured 5x slower than 1 at load 2); give real presets the cores
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU) (default %(default)s)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; the medians are reported (default %(default)s)"
    )
    ap.add_argument(
        "--llm-dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="the LLM's dtype (default: the preset's, float32 tiny, bfloat16 real); SAM stays float32",
    )
    ap.add_argument(
        "--skip-uncached",
        action="store_true",
        help="leave out the uncached loop (a full forward a token: minutes a token for a real preset on a CPU)",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; the last lines are `name: value`."""
    from pixelqa.model import ChatState, ObjectMemoryBank, Point
    from pixelqa.model.chat import build_batch
    from pixelqa.model.generation import greedy_generate

    args = build_parser().parse_args(argv)
    check_common(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size or (112 if args.preset == "tiny" else 448)
    # as built: the LLM in bfloat16 for real presets, SAM and the new modules in float32 (no whole-model cast)
    model = build_model(args.preset, args.device, args.path, llm_dtype=args.llm_dtype).eval()
    clip = _clip(args.frames, size)
    state = ChatState(clip, "video", ObjectMemoryBank(args.frames))
    filler = "Describe every object in the video, where it moves and what it does. "
    text = filler
    while True:
        batch = build_batch(model, state, text, None, [], [])
        if batch.input_ids.shape[1] >= args.prompt_tokens:
            break
        text += filler
    n_prompt = int(batch.input_ids.shape[1])
    states = torch.randn(1, model.qwen.config.text_config.hidden_size)
    calls = {
        "cached": lambda: greedy_generate(model, batch, args.new_tokens, stop_at_eos=False),
        "plain": lambda: greedy_generate(model, batch, args.new_tokens, use_cache=False, stop_at_eos=False),
        "propagation": lambda: model.decode_states(clip, states),
        "single": lambda: model.chat(clip, "What happens?", max_new_tokens=args.new_tokens),
        "two_pass": lambda: model.chat(
            clip, "What is <|ref|> doing?", prompts=[Point(0.5, 0.5, frame=1)], max_new_tokens=args.new_tokens
        ),
    }
    if args.skip_uncached:
        del calls["plain"]
    times: dict[str, list[float]] = {k: [] for k in calls}
    results: dict[str, object] = {}
    with torch.no_grad():
        greedy_generate(model, batch, 2)  # warm-up
        for _ in range(args.repeats):  # interleaved, medians: a busy machine slows both sides of each ratio alike
            for name, fn in calls.items():
                seconds, results[name] = _timed(fn, args.device)
                times[name].append(seconds)
    t = {k: statistics.median(v) for k, v in times.items()}
    t_cached, t_prop, t_single, t_two = t["cached"], t["propagation"], t["single"], t["two_pass"]
    cached = results["cached"]
    agreement = first_difference(model, batch, cached.ids, results["plain"].ids) if "plain" in results else None
    if agreement is not None and model.llm_dtype == torch.float32:
        # in float32 the two paths agree to rounding far below any logit gap: a difference is a cache error
        assert agreement["identical"] == agreement["of"], f"cached and uncached greedy generation disagree: {agreement}"
    report = {
        "preset": args.preset,
        "device": args.device,
        "prompt_tokens": n_prompt,
        "new_tokens": len(cached.ids),
        "frames": args.frames,
        "size": size,
    }
    print(json.dumps(report))
    cached_tps = len(cached.ids) / t_cached
    print(f"cached_tokens_per_s: {cached_tps:.1f}")
    if "plain" in results:
        plain_tps = len(results["plain"].ids) / t["plain"]
        print(f"uncached_tokens_per_s: {plain_tps:.1f}")
        print(f"cached_vs_uncached: {cached_tps / plain_tps:.2f}x")
        print(f"cached_vs_uncached_identical_tokens: {agreement['identical']:.0f}/{agreement['of']:.0f}")
        if "gap" in agreement:  # bf16: greedy on a random model's flat logits flips at rounding-level ties
            print(f"first_difference_logit_gap: {agreement['gap']:.3g} (max |logit| {agreement['scale']:.3g})")
    print(f"propagation_s_per_frame: {t_prop / args.frames:.4f}")
    print(f"prefill_plus_answer_vs_single_generate: {t_two / t_single:.2f}x")
    # the pre-fill must decode its object's masks (SAM on every frame), which a single generate does not do; on the
    # tiny preset SAM dominates, so the LLM side of the protocol is reported apart
    print(f"prefill_plus_answer_without_sam_vs_single_generate: {max(t_two - t_prop, 0.0) / t_single:.2f}x")


if __name__ == "__main__":
    main()
