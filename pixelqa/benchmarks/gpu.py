"""GPU benchmark: every real-size figure in one command, prepared for a few minutes of a lent CUDA machine.

    python -m pixelqa.bench gpu [--presets unipixel-3b,unipixel-7b] [--budget-s 420]

Per preset (random init, bf16, LoRA rank 128, gradient checkpointing, SAM 2.1 Hiera-B+ at 768 px; batch of 4
videos of 4 frames at 448 px from `pixelqa.benchmarks.model`): a plain Qwen2.5-VL training step and a UniPixel step
on the same batch, with SAM's image encoder frozen and trained, each with its peak memory; evaluation samples/s
(teacher-forced forward in eval mode plus J&F scoring on the GPU); seconds per frame of mask decoding and
propagation (eval forward with and without mask decoding on a longer clip); cached generation tokens/s; and one
DDP step when more than one GPU is visible. Every figure is printed as `name: value` the moment it is measured, so a
run cut short keeps what it measured. The 7B preset runs only when the time budget and the GPU's memory allow it.
Without CUDA it exits with status 2 at once. `--device cpu --presets tiny` runs every code path at the tiny size
(the test does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch
from pixelqa.benchmarks import check_common
from pixelqa.benchmarks.model import (
    autocast,
    build_model,
    make_batch,
    make_unipixel_step,
    time_steps,
    training_steps,
)
from pixelqa.fit import set_tf32
from pixelqa.train.module import Stage3Module

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

# Stage 3's trainable groups, as its module defines them, without the full embedding matrices (LoRA, new token rows
# and modules, SAM's decoder); "mask_decoder_image_encoder" is added for the "encoder trained" figures.
TRAINABLE = list(Stage3Module.trainable)
IMAGE_ENCODER = "mask_decoder_image_encoder"
# Peak memory of the 7B run relative to the 3B run (parameters 8.3B vs 3.8B, wider activations): skip it unless
# this much of the 3B peak fits in the GPU's memory.
SEVEN_B_MEMORY_FACTOR = 2.4


def figure(name: str, value: object) -> None:
    """Print one `name: value` line at once (a run cut short keeps every line printed before)."""
    print(f"{name}: {value}", flush=True)


class Clock:
    """The run's time budget: how long since the start and whether a stage of `need_s` still fits."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        """Seconds since the benchmark started."""
        return time.perf_counter() - self.start

    def fits(self, need_s: float) -> bool:
        """Whether `need_s` more seconds stay within the budget."""
        return self.elapsed() + need_s <= self.budget_s


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Best seconds of `repeats` runs of `fn` after one warm-up."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_training(
    model: UniPixel, batch: Batch, tag: str, device: str, steps: int, precision: str = "32-true"
) -> float:
    """Plain Qwen vs UniPixel step, SAM's image encoder frozen then trained; returns the highest peak memory (GiB).

    `precision`: the forwards' autocast, as Lightning's trainer precision of that name (trainer=gpu: bf16-mixed)."""
    model.set_trainable(TRAINABLE)
    plain_step, unipixel_step = training_steps(model, batch, precision)
    plain_s, plain_mem = time_steps(plain_step, steps, device)
    figure(f"{tag}_plain_qwen_step_s", f"{plain_s:.4f}")
    ours_s, ours_mem = time_steps(unipixel_step, steps, device)
    figure(f"{tag}_unipixel_step_encoder_frozen_s", f"{ours_s:.4f}")
    figure(f"{tag}_step_ratio_encoder_frozen", f"{ours_s / plain_s:.3f}")
    del plain_step, unipixel_step  # their optimizer states
    # where the difference goes: the same step without <|seg|> decoding (prompt and memory tokens kept, SAM's mask
    # path left out) splits it into the token side and the mask side
    no_masks_s, _ = time_steps(make_unipixel_step(model, batch, precision, decode_masks=False), steps, device)
    figure(f"{tag}_unipixel_step_no_mask_decoding_s", f"{no_masks_s:.4f}")
    figure(f"{tag}_step_ratio_no_mask_decoding", f"{no_masks_s / plain_s:.3f}")
    model.set_trainable([*TRAINABLE, IMAGE_ENCODER])
    unipixel_step = make_unipixel_step(model, batch, precision)
    trained_s, trained_mem = time_steps(unipixel_step, steps, device)
    figure(f"{tag}_unipixel_step_encoder_trained_s", f"{trained_s:.4f}")
    figure(f"{tag}_step_ratio_encoder_trained", f"{trained_s / plain_s:.3f}")
    if device == "cuda":
        figure(f"{tag}_plain_qwen_peak_mem_gib", f"{plain_mem:.2f}")
        figure(f"{tag}_unipixel_encoder_frozen_peak_mem_gib", f"{ours_mem:.2f}")
        figure(f"{tag}_unipixel_encoder_trained_peak_mem_gib", f"{trained_mem:.2f}")
    del unipixel_step
    model.set_trainable(TRAINABLE)
    model.zero_grad(set_to_none=True)
    return max(plain_mem, ours_mem, trained_mem)


@torch.no_grad()
def measure_evaluation(
    model: UniPixel, batch: Batch, tag: str, device: str, repeats: int, precision: str = "32-true"
) -> None:
    """Samples/s of teacher-forced evaluation (Lightning's validation under `precision`): eval-mode forward, then J&F
    of every <|seg|> mask on the device."""
    from pixelqa.metrics import JAndF

    model.eval()

    def evaluate() -> None:
        with autocast(device, precision):
            out = model(batch)
        metric = JAndF().to(device)
        for pred, target in zip(out.pred_masks, batch.seg_masks):
            for k in range(min(pred.shape[0], target.shape[0])):
                metric.update(pred[k] > 0, target[k].to(pred.device))
        metric.compute()

    seconds = _timed(evaluate, device, repeats)
    figure(f"{tag}_eval_samples_per_s", f"{len(batch.frames) / seconds:.2f}")
    model.train()


@torch.no_grad()
def measure_propagation(model: UniPixel, long_batch: Batch, tag: str, device: str, repeats: int) -> None:
    """Seconds per frame of SAM's mask decoding and propagation: eval forward with masks minus without, per frame;
    and the share of it that is SAM's image encoder (Hiera trunk + neck over all frames in one call)."""
    model.eval()
    with_masks = _timed(lambda: model(long_batch), device, repeats)
    without = _timed(lambda: model(long_batch, decode_masks=False), device, repeats)
    frames = torch.cat(list(long_batch.frames)).to(device)
    encoder = _timed(lambda: model.mask_decoder.encode_frames(frames), device, repeats)
    figure(f"{tag}_mask_propagation_s_per_frame", f"{max(with_masks - without, 0.0) / len(frames):.4f}")
    figure(f"{tag}_sam_image_encoder_s_per_frame", f"{encoder / len(frames):.4f}")
    model.train()


@torch.no_grad()
def measure_generation(model: UniPixel, prompt: Batch, tag: str, device: str, new_tokens: int) -> None:
    """Tokens/s of UniPixel's KV-cached greedy generation (pixelqa.model.generation) on the first prompt sample."""
    import copy

    from pixelqa.model.generation import greedy_generate

    model.eval()
    one = copy.copy(prompt)
    if prompt.input_ids.shape[0] > 1:  # generation runs one conversation: the first sample (and its media)
        n = int(prompt.attention_mask[0].sum())
        one.input_ids, one.attention_mask = prompt.input_ids[:1, :n], prompt.attention_mask[:1, :n]
        one.labels, one.mm_token_type_ids = prompt.labels[:1, :n], prompt.mm_token_type_ids[:1, :n]
        one.frames = prompt.frames[:1]
        if prompt.video_grid_thw is not None:
            per = int(prompt.video_grid_thw[0].prod())
            one.pixel_values_videos = prompt.pixel_values_videos[:per]
            one.video_grid_thw = prompt.video_grid_thw[:1]
            one.second_per_grid_ts = None if prompt.second_per_grid_ts is None else prompt.second_per_grid_ts[:1]
        one.prompts, one.memory = prompt.prompts[:1], prompt.memory[:1]
    # random weights may emit <|im_end|> at once: stop_at_eos=False decodes the full length
    seconds = _timed(lambda: greedy_generate(model, one, new_tokens, stop_at_eos=False), device, 1)
    figure(f"{tag}_generate_tokens_per_s", f"{new_tokens / seconds:.1f}")
    figure(f"{tag}_generate_path", "UniPixel greedy generation with a KV cache (pixelqa.model.generation), batch 1")
    model.train()


def _ddp_worker(rank: int, world: int, preset: str, device: str, batch: int, frames: int, size: int, port: int):
    """One DDP rank: build the model, wrap it, time one training step after a warm-up (rank 0 prints)."""
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    try:
        if device == "cuda":
            torch.cuda.set_device(rank)
        torch.manual_seed(0)
        model = build_model(preset, device if device == "cpu" else f"cuda:{rank}")
        model.set_trainable(TRAINABLE)
        data = make_batch(model, batch, frames, size, seed=rank).to(next(model.parameters()).device)
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step() -> None:
            wrapped(data).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = _timed(step, device, 1)
        if rank == 0:
            figure(f"{preset.removeprefix('unipixel-')}_ddp{world}_step_s", f"{seconds:.4f}")
    finally:
        torch.distributed.destroy_process_group()


def measure_ddp(preset: str, device: str, world: int, batch: int, frames: int, size: int) -> None:
    """One DDP training step over `world` processes (NCCL on GPUs, gloo on CPU), each rank with its own batch."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(world, preset, device, batch, frames, size, port), nprocs=world, join=True)


def run_preset(preset: str, args: argparse.Namespace, clock: Clock) -> float | None:
    """Every single-device figure of one preset; returns the training peak memory in GiB (0 on CPU)."""
    tag = preset.removeprefix("unipixel-")
    tiny = preset == "tiny"
    size = args.size or (112 if tiny else 448)
    start = time.perf_counter()
    model = build_model(preset, args.device)
    figure(f"{tag}_build_s", f"{time.perf_counter() - start:.1f}")
    batch = make_batch(model, args.batch, args.frames, size).to(args.device)
    figure(f"{tag}_batch", f"{args.batch} videos x {args.frames} frames x {size} px, {batch.input_ids.shape[1]} tokens")
    peak = measure_training(model, batch, tag, args.device, args.steps, args.precision)
    measure_evaluation(model, batch, tag, args.device, args.repeats, args.precision)
    long_batch = make_batch(model, 1, args.propagation_frames, size, seed=1).to(args.device)
    measure_propagation(model, long_batch, tag, args.device, args.repeats)
    measure_generation(
        model, make_batch(model, 1, args.frames, size, seed=2).to(args.device), tag, args.device, args.new_tokens
    )
    figure(f"{tag}_done_at_s", f"{clock.elapsed():.0f}")
    del model, batch, long_batch
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return peak


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench gpu`."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.bench gpu", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--presets", default="unipixel-3b,unipixel-7b", help="comma-separated, run in this order (default %(default)s)"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="start no preset that may not end within this many seconds (default %(default)s)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed training steps per measurement, the median kept (default %(default)s)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed evaluation / propagation runs, the best kept (default %(default)s)",
    )
    ap.add_argument("--batch", type=int, default=4, help="videos per training / evaluation batch (default %(default)s)")
    ap.add_argument("--frames", type=int, default=4, help="frames per video (default %(default)s)")
    ap.add_argument("--size", type=int, default=None, help="frame size in px (default 448; tiny 112)")
    ap.add_argument(
        "--propagation-frames", type=int, default=16, help="frames of the propagation video (default %(default)s)"
    )
    ap.add_argument(
        "--new-tokens", type=int, default=64, help="tokens generated per generation run (default %(default)s)"
    )
    ap.add_argument("--ddp", type=int, default=None, help="DDP processes (default: the visible GPUs if > 1, else none)")
    ap.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="GPU strategies to run one real stage-3 step with (pixelqa.fit), comma-separated; 'none' for none "
        "(default %(default)s)",
    )
    ap.add_argument(
        "--precision",
        default="bf16-mixed",
        choices=["bf16-mixed", "32-true"],
        help="the training and evaluation forwards' autocast, as that trainer precision (trainer=gpu: bf16-mixed; "
        "default %(default)s)",
    )
    ap.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 in float32 CUDA matmuls and convolutions (fit's trainer.tf32, default on as released)",
    )
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)  # cpu: tests
    return ap


STRATEGIES = ("deepspeed", "fsdp")


def strategy_command(strategy: str, preset: str, path: str | None, out: str, devices: str = "-1") -> list[str]:
    """`pixelqa.fit` arguments for one stage-3 step of `preset` under a GPU strategy (synthetic data, no tracking)."""
    args = [sys.executable, "-m", "pixelqa.fit", "recipe=stage3", f"model={preset}", f"trainer={strategy}"]
    if path is not None:
        args.append(f"model.path={path}")
    args += [
        "trainer.max_steps=1",
        f"trainer.devices={devices}",
        "trainer.val_check_interval=null",
        "eval.after_fit=false",  # the step is timed, not the validation a 3B would run after it
        "tracking=none",
        f"output_dir={out}",
        "data.batch_size=1",
    ]
    return args


def measure_strategies(preset: str, strategies: list[str], clock: Clock, device: str) -> None:
    """One real training step of `preset` under each strategy (a `pixelqa.fit` subprocess), its time or its error."""
    import subprocess
    import tempfile

    from pixelqa.benchmarks.model import write_config_dir

    tag = preset.removeprefix("unipixel-")
    for strategy in strategies:
        left = clock.budget_s - clock.elapsed()
        if left < 60:
            figure(f"{tag}_{strategy}_step", "skipped: over the time budget")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = None if preset == "tiny" else str(write_config_dir(preset, Path(tmp) / "config"))
            cmd = strategy_command(strategy, preset, path, str(Path(tmp) / "run"), "-1" if device == "cuda" else "1")
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=min(left, 300))
            except subprocess.TimeoutExpired:
                figure(f"{tag}_{strategy}_step", f"failed: no step within {min(left, 300):.0f} s")
                continue
            seconds = time.perf_counter() - t0
            if done.returncode == 0:
                figure(f"{tag}_{strategy}_step", f"ok, one step in a {seconds:.0f} s run (build and data included)")
            else:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                figure(f"{tag}_{strategy}_step", f"failed (exit {done.returncode}): {last}")


def _fail(message: str) -> None:
    print(f"bench gpu: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Run every figure that fits the budget; exit 2 at once without CUDA."""
    args = build_parser().parse_args(argv)
    check_common(args, cuda=False)  # its own CUDA message below
    if args.device == "cuda" and not torch.cuda.is_available():
        _fail("needs a CUDA GPU and torch.cuda.is_available() is False here; run it on a GPU machine")
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in ("tiny", "unipixel-3b", "unipixel-7b")]
    if unknown or not presets:
        _fail(f"--presets: got {args.presets!r}, expected a comma-separated list of unipixel-3b, unipixel-7b, tiny")
    strategies = [x for x in args.strategies.split(",") if x and x != "none"]
    bad = [x for x in strategies if x not in STRATEGIES]
    if bad:
        _fail(f"--strategies: got {bad}, expected names from {STRATEGIES} or 'none'")
    clock = Clock(args.budget_s)
    set_tf32(args.tf32)  # as fit sets it from trainer.tf32
    figure("settings", f"precision {args.precision}, tf32 {'on' if args.tf32 else 'off'}")
    total = float("inf")  # GiB of GPU memory
    if args.device == "cuda":
        name = torch.cuda.get_device_name(0)
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        figure("gpu", f"{torch.cuda.device_count()} x {name}, {total:.0f} GiB")
    torch.manual_seed(0)
    peaks: dict[str, float] = {}
    durations: dict[str, float] = {}
    for preset in presets:
        if preset == "unipixel-7b" and "unipixel-3b" in durations:
            need = durations["unipixel-3b"] * 2.2
            peak_3b = peaks["unipixel-3b"]
            if not clock.fits(need):
                figure("7b", f"skipped: about {need:.0f} s needed, {args.budget_s - clock.elapsed():.0f} s left")
                continue
            if peak_3b * SEVEN_B_MEMORY_FACTOR > total:
                figure("7b", f"skipped: about {peak_3b * SEVEN_B_MEMORY_FACTOR:.0f} GiB needed, {total:.0f} GiB")
                continue
        start = clock.elapsed()
        peaks[preset] = run_preset(preset, args, clock)
        durations[preset] = clock.elapsed() - start
    world = args.ddp if args.ddp is not None else (torch.cuda.device_count() if args.device == "cuda" else 0)
    if world > 1:
        ddp_preset = "unipixel-3b" if "unipixel-3b" in presets else presets[0]
        if clock.fits(durations.get(ddp_preset, 0.0)):
            size = args.size or (112 if ddp_preset == "tiny" else 448)
            measure_ddp(ddp_preset, args.device, world, args.batch, args.frames, size)
        else:
            figure("ddp", "skipped: over the time budget")
    if strategies:
        measure_strategies("unipixel-3b" if "unipixel-3b" in presets else presets[0], strategies, clock, args.device)
    figure("total_s", f"{clock.elapsed():.0f}")


if __name__ == "__main__":
    main()
