"""Model benchmark: one UniPixel training step vs a plain Qwen2.5-VL training step on the same batch.

`python -m pixelqa.bench model [--preset tiny|unipixel-3b|unipixel-7b] [--path DIR] [--device cpu|cuda]
[--batch B] [--frames T] [--size PX] [--steps N]`

Both sides train the same LoRA-adapted backbone with AdamW on the same tokenised batch (video samples with a
mask prompt, a memory turn and a <|seg|> answer). The plain step is Qwen2.5-VL's own forward with labels; the
UniPixel step adds prompt / memory tokens, <|seg|> decoding through SAM 2.1 with propagation and the mask losses.
tiny: tiny Qwen + micro SAM at 128 px (the demo setting). unipixel-3b / -7b: the real architectures with random
weights (SAM 2.1 Hiera-B+ at 768 px, bfloat16 Qwen); `--path` may name a local Qwen2.5-VL directory, otherwise a
config.json with the published sizes is written to a temp dir. Peak memory is reported on CUDA only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch, MemoryRef, VisualPrompt
from pixelqa.benchmarks import check_common
from pixelqa.model.config import LoraConfig, MaskDecoderConfig, UniPixelConfig
from pixelqa.prompt_format import REF, SEG, memory_prompt, object_tag

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

# Published Qwen2.5-VL sizes (config.json of the 3B / 7B Instruct releases), for random-init benchmarks.
_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_act": "silu",
    "in_chans": 3,
}
REAL_CONFIGS = {
    "unipixel-3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision": dict(_VISION, out_hidden_size=2048),
        "tie": True,
    },
    "unipixel-7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision": dict(_VISION, out_hidden_size=3584),
        "tie": False,
    },
}


def write_config_dir(preset: str, root: Path) -> Path:
    """Write a config.json of a real Qwen2.5-VL size into `root` (weights-free: random init)."""
    from transformers import Qwen2_5_VLConfig

    spec = REAL_CONFIGS[preset]
    cfg = Qwen2_5_VLConfig(text_config=spec["text"], vision_config=spec["vision"], tie_word_embeddings=spec["tie"])
    cfg.save_pretrained(root)
    return root


def make_batch(model: UniPixel, batch: int, frames: int, size: int, seed: int = 0) -> Batch:
    """B video samples: a mask prompt, a one-pair memory preamble, a <|seg|> answer with per-frame targets."""
    g = torch.Generator().manual_seed(seed)
    proc = model.processor
    texts, videos, prompts, memory, seg, valid = [], [], [], [], [], []
    for _ in range(batch):
        vid = torch.randint(0, 256, (frames, 3, size, size), generator=g, dtype=torch.uint8)
        obj = torch.zeros(frames, size, size, dtype=torch.bool)
        for t in range(frames):
            y = (size // 8) * (1 + t % 4)
            obj[t, y : y + size // 3, size // 4 : size // 2 + size // 8] = True
        # The shared text protocol (token strings and preamble from pixelqa.prompt_format): object 1 is in memory
        # on the first frame pair, the question refers to a region by mask, and the answer segments object 1.
        user = f"{memory_prompt({1: [0, 1]}, frames)}\nWhat does {object_tag(1)} do next to {REF}? Please segment it."
        msgs = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"It moves down. {object_tag(1)} {SEG}"}]},
        ]
        texts.append(proc.apply_chat_template(msgs, tokenize=False))
        videos.append(vid)
        box = torch.zeros(size, size, dtype=torch.bool)
        box[size // 2 :, size // 2 :] = True
        prompts.append([VisualPrompt("mask", 0, (), box)])
        memory.append([MemoryRef(1, 0, obj[0] | obj[min(1, frames - 1)])])  # one <|mem|>: the pair's mask union
        seg.append(obj[None])
        valid.append(torch.ones(1, frames, dtype=torch.bool))
    enc = proc(text=texts, videos=videos, padding=True, return_tensors="pt")
    ids = enc["input_ids"]
    labels = ids.clone()
    labels[enc["attention_mask"] == 0] = -100
    labels[enc["mm_token_type_ids"] != 0] = -100
    return Batch(
        input_ids=ids,
        attention_mask=enc["attention_mask"],
        labels=labels,
        mm_token_type_ids=enc["mm_token_type_ids"],
        frames=videos,
        pixel_values_videos=enc["pixel_values_videos"],
        video_grid_thw=enc["video_grid_thw"],
        second_per_grid_ts=enc.get("second_per_grid_ts"),
        prompts=prompts,
        memory=memory,
        seg_masks=seg,
        seg_valid=valid,
    )


def benchmark_config(
    preset: str,
    path: str | None,
    sam_arch: str | None = None,
    sam_size: int | None = None,
    llm_dtype: str | None = None,
) -> UniPixelConfig:
    """The benchmarks' UniPixel: tiny in float32 with micro SAM at 128 px; real sizes in bfloat16 with gradient
    checkpointing, LoRA rank 128 and SAM 2.1 Hiera-B+ at 768 px (unless `sam_arch` / `sam_size` / `llm_dtype` say
    otherwise)."""
    tiny = preset == "tiny"
    return UniPixelConfig(
        preset=preset,
        path=path,
        dtype=llm_dtype or ("float32" if tiny else "bfloat16"),
        gradient_checkpointing=not tiny,
        lora=LoraConfig(enabled=True, rank=8 if tiny else 128, alpha=16 if tiny else 256, dropout=0.0),
        mask_decoder=MaskDecoderConfig(
            arch=sam_arch or ("micro" if tiny else "hiera_b+"),
            image_size=sam_size or (128 if tiny else 768),
        ),
    )


def build_model(
    preset: str,
    device: str,
    path: str | None = None,
    sam_arch: str | None = None,
    sam_size: int | None = None,
    llm_dtype: str | None = None,
) -> UniPixel:
    """A UniPixel of `preset` on `device` in train mode: random weights for real presets unless `path` names a
    Qwen2.5-VL folder (a config.json with the published sizes is written to a temp dir otherwise)."""
    from pixelqa.model import UniPixel

    with tempfile.TemporaryDirectory() as tmp:
        if preset != "tiny" and path is None:
            path = str(write_config_dir(preset, Path(tmp)))
        cfg = benchmark_config(preset, path, sam_arch, sam_size, llm_dtype)
        return UniPixel(cfg, random_init=preset != "tiny").to(device).train()


def autocast(device: str, precision: str) -> torch.autocast:
    """The forward's autocast context of a Lightning precision: bf16 autocast for "bf16-mixed", none for "32-true"."""
    if precision not in ("bf16-mixed", "32-true"):
        raise ValueError(f"precision: got {precision!r}, expected 'bf16-mixed' or '32-true'")
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def make_unipixel_step(
    model: UniPixel, batch: Batch, precision: str = "32-true", decode_masks: bool = True
) -> Callable[[], None]:
    """One AdamW step of UniPixel on `batch` over the parameters that require grad now, the forward under
    `precision`'s autocast; decode_masks=False leaves SAM's decoding of the <|seg|>s out (prompt and memory tokens
    kept)."""
    device = batch.input_ids.device.type
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        with autocast(device, precision):
            out = model(batch, decode_masks=decode_masks)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def training_steps(
    model: UniPixel, batch: Batch, precision: str = "32-true"
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(plain Qwen2.5-VL step, UniPixel step) on `batch`: one AdamW step each over the parameters that require grad
    now (the plain step: those of the backbone only, through Qwen's own forward with labels). `precision`: the
    forward's autocast, as Lightning's trainer precision of that name runs it."""
    device = batch.input_ids.device.type
    opt_plain = torch.optim.AdamW([p for p in model.backbone.parameters() if p.requires_grad], lr=1e-5)

    def plain_step() -> None:
        with autocast(device, precision):
            out = model.backbone(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                labels=batch.labels,
                mm_token_type_ids=batch.mm_token_type_ids,
                pixel_values_videos=batch.pixel_values_videos,
                video_grid_thw=batch.video_grid_thw,
                second_per_grid_ts=batch.second_per_grid_ts,
                use_cache=False,
            )
        out.loss.backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)

    return plain_step, make_unipixel_step(model, batch, precision)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], steps: int, device: str) -> tuple[float, float]:
    """Median seconds per step after one warm-up, and peak CUDA memory in GiB (0 on CPU)."""
    step()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return statistics.median(times), peak


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m pixelqa.bench model`."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.bench model")
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "unipixel-3b", "unipixel-7b"],
        help="model size (default %(default)s)",
    )
    ap.add_argument("--path", default=None, help="local Qwen2.5-VL dir (real presets); default: random init")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to run on (default %(default)s)")
    ap.add_argument("--batch", type=int, default=4, help="videos per batch (default %(default)s)")
    ap.add_argument("--frames", type=int, default=4, help="frames per video (default %(default)s)")
    ap.add_argument("--size", type=int, default=None, help="frame size in px (tiny 112, real 448)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps of each side (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU) (default %(default)s)")
    ap.add_argument("--sam-arch", default=None, help="SAM 2.1 arch (default: micro for tiny, hiera_b+ otherwise)")
    ap.add_argument("--sam-size", type=int, default=None, help="SAM input size (default: 128 tiny, 768 otherwise)")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its figures; the last lines are `name: value`."""
    args = build_parser().parse_args(argv)
    check_common(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tiny = args.preset == "tiny"
    size = args.size or (112 if tiny else 448)
    model = build_model(args.preset, args.device, args.path, args.sam_arch, args.sam_size)
    batch = make_batch(model, args.batch, args.frames, size).to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_step, unipixel_step = training_steps(model, batch)

    plain_s, plain_mem = time_steps(plain_step, args.steps, args.device)
    ours_s, ours_mem = time_steps(unipixel_step, args.steps, args.device)
    n_ours = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": args.device,
                "batch": args.batch,
                "frames": args.frames,
                "size": size,
                "threads": args.threads,
                "tokens": int(batch.input_ids.numel()),
                "trainable_params": n_ours,
                "all_params": n_all,
            }
        )
    )
    print(f"plain_qwen_step_s: {plain_s:.4f}")
    print(f"unipixel_step_s: {ours_s:.4f}")
    if args.device == "cuda":
        print(f"plain_qwen_peak_mem_gib: {plain_mem:.2f}")
        print(f"unipixel_peak_mem_gib: {ours_mem:.2f}")
        print(f"peak_mem_ratio: {ours_mem / max(plain_mem, 1e-9):.2f}")
    print(f"step_time_ratio: {ours_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
