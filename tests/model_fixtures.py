"""Hand-built batches for the model tests: tokenised with the tiny model's own processor (not the data collate)."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import torch

from pixelqa.batch import Batch, MemoryRef, VisualPrompt
from pixelqa.model.config import LoraConfig, UniPixelConfig


def tiny_config(**kw) -> UniPixelConfig:
    """Tiny Qwen + micro SAM at 128 px; keyword overrides of top-level fields."""
    cfg = UniPixelConfig(preset="tiny", seed=0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@lru_cache(maxsize=4)
def cached_model(lora: bool = False, obj_scores: bool = True):
    """A tiny UniPixel (shared between tests that do not train it)."""
    from pixelqa.model import UniPixel

    cfg = tiny_config(lora=LoraConfig(enabled=lora, rank=4, alpha=8, dropout=0.0))
    cfg.mask_decoder.pred_obj_scores = obj_scores
    return UniPixel(cfg)


def frames(t: int, h: int = 112, w: int = 112, seed: int = 0) -> torch.Tensor:
    """(t, 3, h, w) random uint8 frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8)


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """(h, w) bool mask with one rectangle."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def make_batch(processor, samples: list[dict]) -> Batch:
    """Collate samples {frames, kind, user, answer, prompts, memory, seg_masks, seg_valid} into a Batch.

    Labels cover the assistant answer (everything after the last '<|im_start|>assistant\\n').
    """
    texts, images, videos = [], [], []
    for s in samples:
        msgs = [
            {"role": "user", "content": [{"type": s["kind"]}, {"type": "text", "text": s["user"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": s["answer"]}]},
        ]
        texts.append(processor.apply_chat_template(msgs, tokenize=False))
        if s["kind"] == "image":
            images.append(s["frames"][0])
        else:
            videos.append(s["frames"])
    enc = processor(text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt")
    ids = enc["input_ids"]
    tok = processor.tokenizer
    start = tok.convert_tokens_to_ids("<|im_start|>")
    head = len(tok("assistant\n")["input_ids"])
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        last = int((ids[b] == start).nonzero().max())
        labels[b, last + 1 + head :] = ids[b, last + 1 + head :]
    labels[enc["attention_mask"] == 0] = -100
    return Batch(
        input_ids=ids,
        attention_mask=enc["attention_mask"],
        labels=labels,
        mm_token_type_ids=enc["mm_token_type_ids"],
        frames=[s["frames"] for s in samples],
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        pixel_values_videos=enc.get("pixel_values_videos"),
        video_grid_thw=enc.get("video_grid_thw"),
        second_per_grid_ts=enc.get("second_per_grid_ts"),
        prompts=[s.get("prompts", []) for s in samples],
        memory=[s.get("memory", []) for s in samples],
        seg_masks=[
            s.get("seg_masks", torch.zeros(0, s["frames"].shape[0], *s["frames"].shape[-2:], dtype=torch.bool))
            for s in samples
        ],
        seg_valid=[s.get("seg_valid", torch.ones(0, s["frames"].shape[0], dtype=torch.bool)) for s in samples],
        tasks=[s["kind"] for s in samples],
    )


def training_batch(processor, t: int = 4, size: int = 112) -> Batch:
    """An image sample (point + box prompts, one <|seg|>) and a video sample (mask prompt, memory turn, <|seg|>)."""
    img = frames(1, size, size, seed=1)
    vid = frames(t, size, size, seed=2)
    obj = torch.stack([rect(size, size, 20 + 4 * i, 60 + 4 * i, 30, 80) for i in range(t)])  # (T, H, W)
    obj[t - 1] = False  # absent on the last frame
    valid = torch.ones(1, t, dtype=torch.bool)
    valid[0, 1] = False  # frame 1 not annotated
    image = {
        "frames": img,
        "kind": "image",
        "user": "What is <|ref|> next to <|ref|>? Please segment it.",
        "answer": "The relevant regions for this question are [1] <|seg|>.",
        "prompts": [VisualPrompt("point", 0, (0.25, 0.5)), VisualPrompt("box", 0, (0.1, 0.2, 0.6, 0.9))],
        "seg_masks": rect(size, size, 10, 50, 10, 60)[None, None],
        "seg_valid": torch.ones(1, 1, dtype=torch.bool),
    }
    video = {
        "frames": vid,
        "kind": "video",
        "user": "Here is a video with 4 frames denoted as <1> to <4>. The highlighted regions are as follows:\n"
        "[1]: <1> <|mem|> <2> <|mem|>\nWhat is [1] doing with <|ref|>?",
        "answer": "It moves. [1] <|seg|>",
        "prompts": [VisualPrompt("mask", 1, (), rect(size, size, 40, 90, 40, 90))],
        "memory": [MemoryRef(1, 0, obj[0]), MemoryRef(1, 1, obj[1])],
        "seg_masks": obj[None],
        "seg_valid": valid,
    }
    return make_batch(processor, [image, video])


RELEASED = Path(__file__).resolve().parents[2] / "shared" / "data" / "unipixel-official-tiny" / "checkpoint"


def released_copy(tmp_path: Path, name: str = "ckpt") -> Path:
    """A writable copy of the shared released-format fixture checkpoint, `tmp_path/name` (weights linked)."""
    out = tmp_path / name
    out.mkdir()
    for f in RELEASED.iterdir():
        if f.suffix == ".safetensors":
            (out / f.name).symlink_to(f)
        else:
            shutil.copy(f, out / f.name)
    return out
