"""Pre-training of the tiny Qwen2.5-VL on synthetic general VQA: a tiny stand-in for Qwen2.5-VL-Instruct.

UniPixel starts from an instruction-tuned vision-language model that can already read images and answer general
questions about them; its own stages add the region, memory and mask abilities. A random-init tiny Qwen2.5-VL
does not learn to read frames within a demo's few hundred steps (docs/benchmarks.md); this trains one offline:
every Qwen weight with the LM loss on captions, image / video questions and multiple-choice questions of the
synthetic shapes, drawn from the `pretrain` split (never the demo's `train` / `val` splits), plus text-only
option lookups (the in-context skill multiple choice needs, which a real LLM brings from language pre-training).
No region prompt, memory object or `<|seg|>` occurs in its data: those stay for UniPixel's stages.

Qwen2.5-VL's own vision encoder is pre-trained before the language model reads it; so is this one, first
(`pretrain_vision`): the ViT and its merger learn to tell, for every merged token, the colours, kinds and sizes of
the shapes under it (a linear head on the merger's output, dropped afterwards). Measured, it helped a little: the
questions' held-out accuracy rose sooner (docs/benchmarks.md, third pass).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from pixelqa.data.collate import Collator
from pixelqa.data.loader import object_masks, subsample_frames
from pixelqa.data.schema import Sample, Turn
from pixelqa.data.synthetic import ATTRIBUTES, LETTERS, TASK_CYCLE, attribute_indices, make_sample
from pixelqa.model.config import TinySizeConfig
from pixelqa.tinybase.loop import HELD_OUT_OFFSET, adamw_warmup_cosine, batch_indices, optimizer_step

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

# the general abilities an instruction-tuned base brings (UniPixel's own tasks are left out); "option_lookup" is a
# text skill its language pre-training brings: name the letter of a given option, which multiple choice needs
VLM_TASKS = ("caption", "image_qa", "video_qa", "mcq", "option_lookup")
SPLIT = "pretrain"
# sizes of the base: twice the test model's LLM width and depth (the 64-wide 2-layer LLM learned the questions more
# slowly); the ViT keeps the test model's sizes
BASE_SIZES = TinySizeConfig(hidden=128, layers=4, heads=4, vit_hidden=64, vit_depth=2, vit_heads=2)


@dataclass
class VisionSettings:
    """Settings of the ViT pre-training on dense shape labels."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    pool: int = 4000  # distinct frames
    min_pixels: int = 20  # a shape's pixels in a token's cell for it to count as under the token
    seed: int = 0


@dataclass
class VlmSettings:
    """Settings of the VLM pre-training (defaults: the measured build, docs/benchmarks.md)."""

    steps: int = 12000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 500
    pool: int = 8000  # distinct synthetic samples drawn from the pretrain split
    num_frames: int = 4
    seed: int = 0
    eval_every: int = 2000
    eval_samples: int = 200


LABELS = sum(len(values) for _, values in ATTRIBUTES)  # colours, then kinds, then sizes


def frame_labels(sample: Sample, frame: int, cell: int, min_pixels: int) -> torch.Tensor:
    """(cells, LABELS) multi-hot of one frame: the colour, kind and size of every shape under each token's cell."""
    shapes = {s["id"]: s for s in sample.meta["shapes"]}
    ids = sorted(sample.objects)
    masks, _ = object_masks(sample, ids)
    H, W = sample.media.size
    gh, gw = H // cell, W // cell
    out = torch.zeros(gh * gw, LABELS)
    offsets = np.cumsum([0] + [len(values) for _, values in ATTRIBUTES[:-1]])  # each attribute's first column
    for k, oid in enumerate(ids):
        m = torch.from_numpy(np.ascontiguousarray(masks[k, frame, : gh * cell, : gw * cell]))
        counts = m.view(gh, cell, gw, cell).sum((1, 3)).flatten()
        under = counts >= min_pixels
        for col in offsets + attribute_indices(shapes[oid]):
            out[under, int(col)] = 1.0
    return out


def pretrain_vision(model: UniPixel, s: VisionSettings, log: Callable[[str], object] = print) -> float:
    """Train the ViT + merger of `model` to show the shapes under every merged token; returns held-out accuracy.

    Accuracy: balanced over held-out (token, label) pairs, the mean of the hit rates on present and absent labels
    (most pairs are absent: an all-absent guess scores 0.5).
    """
    torch.manual_seed(s.seed)
    visual = model.qwen.model.visual
    image_processor = model.processor.image_processor
    cell = visual.patch_size * visual.spatial_merge_size

    def pool(n: int, offset: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out = []
        for i in tqdm(range(n), desc="frames", leave=False):
            sample = make_sample(offset + i, split=SPLIT, seed=s.seed, task=TASK_CYCLE[i % len(TASK_CYCLE)])
            t = i % sample.media.num_frames
            frame = sample.decode_frames([t])[0]
            px = image_processor(images=[frame], return_tensors="pt")
            grid = px["image_grid_thw"]
            if tuple(grid[0, 1:].tolist()) != tuple(x // visual.patch_size for x in sample.media.size):
                raise RuntimeError(f"image processor resized a {sample.media.size} frame to grid {grid.tolist()}")
            out.append((px["pixel_values"], grid, frame_labels(sample, t, cell, s.min_pixels)))
        return out

    train, held = pool(s.pool, 0), pool(200, HELD_OUT_OFFSET)
    head = torch.nn.Linear(model.qwen.config.text_config.hidden_size, LABELS)
    visual.requires_grad_(True)
    params = list(visual.parameters()) + list(head.parameters())
    opt, sched = adamw_warmup_cosine(params, s.lr, 0, s.steps)
    rng = random.Random(s.seed)

    def run(items):
        pix = torch.cat([x[0] for x in items])
        grid = torch.cat([x[1] for x in items])
        feats = visual(pix.type(visual.dtype), grid_thw=grid).pooler_output  # merged tokens, raster order
        return head(feats.float()), torch.cat([x[2] for x in items])

    bar = tqdm(range(s.steps), desc="pretrain ViT")
    for step in bar:
        logits, labels = run(rng.sample(train, min(s.batch_size, len(train))))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(bce=f"{loss.item():.4f}")
    visual.requires_grad_(False)
    with torch.no_grad():
        logits, labels = run(held)
    pred, truth = logits > 0, labels > 0
    acc = 0.5 * float((pred & truth).sum() / truth.sum().clamp(min=1) + (~pred & ~truth).sum() / (~truth).sum())
    log(f"ViT: held-out balanced token-label accuracy {acc:.4f}")
    return acc


def lookup_sample(index: int, split: str, seed: int) -> Sample:
    """A multiple-choice sample whose question names the option itself (answerable from the text alone)."""
    sample = make_sample(index, split=split, seed=seed, task="mcq")
    rng = np.random.default_rng([seed, index, 7])
    choices = list(sample.choices)
    k = int(rng.integers(0, len(choices)))
    opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    question = f"Options: {opts}. Which option is {choices[k]}? Answer with the option's letter."
    sample.turns = [Turn("user", question), Turn("assistant", LETTERS[k])]
    sample.answer = LETTERS[k]
    sample.meta = {**sample.meta, "question_type": "option_lookup", "base_task": "option_lookup"}
    return sample


def encode_pool(collator: Collator, n: int, split: str, seed: int, num_frames: int, offset: int = 0) -> list[dict]:
    """`n` synthetic samples of the VLM tasks, encoded once (frames at the frames' centres)."""
    out = []
    for i in tqdm(range(n), desc=f"encode {split}", leave=False):
        task = VLM_TASKS[i % len(VLM_TASKS)]
        if task == "option_lookup":
            sample = lookup_sample(offset + i, split, seed)
        else:
            sample = make_sample(offset + i, split=split, seed=seed, task=task)
        sample = subsample_frames(sample, num_frames)
        enc = collator.encode(sample)
        if enc is None:
            raise RuntimeError(f"sample {offset + i} of split {split!r}: dropped by the collator")
        out.append(enc)
    return out


def answer_accuracy(model: UniPixel, collator: Collator, encs: list[dict], batch_size: int = 16) -> dict[str, float]:
    """Share of samples whose every answer token is the teacher-forced arg-max, per task (`VLM_TASKS`)."""
    from pixelqa.metrics.answers import answer_exact_match  # torchmetrics: seconds that `--help` should not wait for

    right: dict[str, list[bool]] = {}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encs), batch_size):
            batch = collator.assemble(encs[i : i + batch_size])
            correct, _ = answer_exact_match(model(batch, decode_masks=False).logits, batch.labels)
            for b, task in enumerate(batch.tasks):
                right.setdefault(batch.meta[b].get("base_task", task), []).append(bool(correct[b]))
    model.train()
    return {t: float(np.mean(v)) for t, v in sorted(right.items())}


def pretrain_vlm(
    model: UniPixel, collator: Collator, s: VlmSettings, log: Callable[[str], object] = print
) -> dict[str, float]:
    """Train every Qwen weight of `model` (a UniPixel without LoRA) on the VLM tasks; returns the final accuracies."""
    torch.manual_seed(s.seed)
    train = encode_pool(collator, s.pool, SPLIT, s.seed, s.num_frames)
    held = encode_pool(collator, s.eval_samples, SPLIT, s.seed, s.num_frames, offset=HELD_OUT_OFFSET)
    qwen = model.qwen
    qwen.requires_grad_(True)
    params = [p for p in qwen.parameters() if p.requires_grad]
    opt, sched = adamw_warmup_cosine(params, s.lr, s.warmup, s.steps)
    model.train()
    batches = batch_indices(len(train), s.batch_size, s.seed)
    bar = tqdm(range(s.steps), desc="pretrain VLM")
    for step in bar:
        idx = next(batches)
        batch = collator.assemble([train[i] for i in idx])
        loss = model(batch, decode_masks=False).losses["lm"]
        optimizer_step(loss, opt, sched, params)
        if step % 50 == 0:
            bar.set_postfix(lm=f"{loss.item():.3f}")
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            log(f"step {step + 1}: lm {loss.item():.4f} held-out accuracy {answer_accuracy(model, collator, held)}")
    qwen.requires_grad_(False)
    return answer_accuracy(model, collator, held)
