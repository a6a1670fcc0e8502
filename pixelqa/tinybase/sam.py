"""Pre-training of the micro SAM 2.1 as a promptable video segmenter: a tiny stand-in for SAM 2.1's weights.

UniPixel starts its mask decoder from SAM 2.1, pre-trained to segment whatever a point or a box marks and to follow
it through a video; its IoU head ranks the three candidates of an ambiguous prompt. The demo's random-init micro
SAM has none of that, and its IoU head never learns to rank them within the demo (docs/benchmarks.md). This trains
the whole micro SAM (image encoder included) the way SAM 2 is trained: a positive point or a box on an object's
first frame, that object's masks on every frame, the same multimask losses our stage 3 uses
(`losses.released_mask_losses`). Objects come from the synthetic `pretrain` split.

With `what_share` > 0 a share of the prompts name *what* the object is instead of where: learned prompt tokens for
its colour, kind and size class (`SemanticPrompts`, thrown away afterwards). A `<|seg|>` state knows what its target
is, not where (docs/benchmarks.md, demo, third pass), and a micro SAM trained on points and boxes alone reads its
prompts by position; these prompts teach SAM's features and decoder to tell objects apart by appearance, as SAM 2.1's
features from a billion masks do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pixelqa.data.loader import object_masks, subsample_frames
from pixelqa.data.synthetic import ATTRIBUTES, attribute_indices, make_sample
from pixelqa.model.losses import released_mask_losses
from pixelqa.model.mask_decoder import DecodedMasks, MaskDecoder
from pixelqa.tinybase.loop import HELD_OUT_OFFSET, adamw_warmup_cosine, batch_indices, optimizer_step

# tasks whose clips are drawn (every object of a clip is a target; images and videos)
SAM_TASKS = ("res", "rvos", "reasonseg", "reason_vos")
SPLIT = "pretrain"
PROMPT_KINDS = ("point", "box", "what")


@dataclass
class SamSettings:
    """Settings of the SAM pre-training (defaults: the measured build, docs/benchmarks.md)."""

    steps: int = 2000
    batch_size: int = 4  # clips (2-3 objects each)
    # a random-init SAM 2 collapses under these losses at 1e-3 (every prompt the same mask, then empty masks)
    lr: float = 1e-4
    warmup: int = 200
    pool: int = 2000
    num_frames: int = 4
    # prompts that name the object's attributes (the rest: points and boxes); off by default: from a SAM fine-tuned with
    # them the demo's selection did not improve beyond run-to-run spread, and from scratch they keep the point and box
    # prompts from being learned (docs/benchmarks.md, demo, fourth pass)
    what_share: float = 0.0
    box_share: float = 0.5  # of the other prompts, boxes (the rest: one positive point)
    seed: int = 0
    focal: float = 100.0
    dice: float = 5.0
    iou: float = 5.0
    objectness: float = 5.0
    eval_every: int = 250
    eval_samples: int = 100


@dataclass
class Target:
    """One clip: frames (T, 3, H, W) uint8, the masks (K, T, H, W) bool of its K objects and their attributes (K, 3),
    indices into each of `ATTRIBUTES`' values."""

    frames: torch.Tensor
    masks: torch.Tensor
    attrs: torch.Tensor


class SemanticPrompts(nn.Module):
    """Learned SAM prompt tokens naming an object's attributes: the sum of one table row per attribute named."""

    def __init__(self, width: int = 256, tokens: int = 2):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.tables = nn.ModuleList(nn.Embedding(len(values), tokens * width) for _, values in ATTRIBUTES)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.5)

    def forward(self, attrs: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        """attrs (K, A) long and named (K, A) bool -> (K, tokens, width) prompt embeddings."""
        rows = torch.stack([t(attrs[:, a]) for a, t in enumerate(self.tables)], 1)  # (K, A, tokens * width)
        return (rows * named[..., None]).sum(1).view(-1, self.tokens, self.width)


def make_targets(n: int, split: str, seed: int, num_frames: int, offset: int = 0) -> list[Target]:
    """`n` synthetic clips with every object's masks (frames at the clip's segment centres).

    Every object of a clip is a target: prompting each shape of the same frames apart is what teaches the decoder
    to follow the prompt instead of outputting every shape.
    """
    out = []
    for i in tqdm(range(n), desc=f"clips {split}", leave=False):
        task = SAM_TASKS[i % len(SAM_TASKS)]
        sample = subsample_frames(make_sample(offset + i, split=split, seed=seed, task=task), num_frames)
        ids = sorted(sample.objects)
        masks, _ = object_masks(sample, ids)
        masks = torch.from_numpy(np.ascontiguousarray(masks))
        shapes = {s["id"]: s for s in sample.meta["shapes"]}
        attrs = torch.tensor([attribute_indices(shapes[i]) for i in ids])  # the attributes a "what" prompt may name
        keep = masks[:, 0].flatten(1).any(-1)  # prompted on the first frame, where it must be visible
        if keep.any():
            frames = torch.from_numpy(sample.decode_frames()).permute(0, 3, 1, 2).contiguous()
            out.append(Target(frames, masks[keep], attrs[keep]))
    return out


def prompt_of(decoder: MaskDecoder, mask: torch.Tensor, box: bool, rng: np.random.Generator) -> torch.Tensor:
    """SAM's sparse embedding (1, n, 256) of a random positive point in `mask` (H, W) or of its bounding box."""
    H, W = mask.shape
    scale = torch.tensor([decoder.image_size / W, decoder.image_size / H])
    ys, xs = mask.nonzero(as_tuple=True)
    if box:
        xyxy = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        xyxy = (xyxy.view(1, 2, 2) * scale).view(1, 4)
        sparse, _ = decoder.sam.sam_prompt_encoder(points=None, boxes=xyxy, masks=None)
        return sparse
    j = int(rng.integers(0, len(xs)))
    return decoder.point_embeddings((torch.tensor([[[float(xs[j]) + 0.5, float(ys[j]) + 0.5]]]) * scale).float())


def what_prompt(semantic: SemanticPrompts, attrs: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Prompt (1, tokens, width) naming a random non-empty subset of an object's attributes `attrs` (A,)."""
    named = torch.from_numpy(rng.random(len(ATTRIBUTES)) < 0.5)
    named[int(rng.integers(0, len(ATTRIBUTES)))] = True  # any one attribute tells the shapes of a clip apart
    return semantic(attrs[None], named[None])


def decode_targets(
    decoder: MaskDecoder,
    ts: list[Target],
    kinds: list[str],
    rng: np.random.Generator,
    semantic: SemanticPrompts | None = None,
) -> DecodedMasks:
    """The decoder's outputs for every object of clips of one length T, as one batch: frames encoded in one call.

    `kinds[k]` says how object k (in clip order, then object order) is prompted on its first frame: "point" (one
    positive point), "box" or "what" (its attributes through `semantic`). Every prompt gets SAM's three candidate
    masks, as a `<|seg|>` prompt does in UniPixel.
    """
    T = ts[0].frames.shape[0]
    if any(t.frames.shape[0] != T for t in ts):
        raise ValueError(f"targets: got lengths {[t.frames.shape[0] for t in ts]}, expected one length")
    objects = [(c, m, a) for c, t in enumerate(ts) for m, a in zip(t.masks, t.attrs)]
    if len(kinds) != len(objects) or any(k not in PROMPT_KINDS for k in kinds):
        raise ValueError(f"kinds: got {kinds}, expected one of {PROMPT_KINDS} per object ({len(objects)})")
    if "what" in kinds and semantic is None:
        raise ValueError("semantic: got None, expected the SemanticPrompts of 'what' prompts")
    features = decoder.encode_frames(torch.cat([t.frames for t in ts]))
    sparse = torch.cat(
        [
            what_prompt(semantic, a, rng) if k == "what" else prompt_of(decoder, m[0], k == "box", rng)
            for (_, m, a), k in zip(objects, kinds)
        ]
    )
    index = torch.stack([torch.arange(T) + c * T for c, _, _ in objects])  # object k's frames: its clip's rows
    return decoder(features, index, sparse)


def by_length(targets: list[Target]) -> list[list[Target]]:
    """Clips grouped by their number of frames (each group decodes as one batch)."""
    groups: dict[int, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.frames.shape[0], []).append(t)
    return list(groups.values())


def mean_iou(
    decoder: MaskDecoder, targets: list[Target], seed: int, semantic: SemanticPrompts | None = None
) -> dict[str, float]:
    """Mean IoU over objects and frames of the selected mask, prompted by a point, by a box and (with `semantic`)
    by what the object is."""
    rng = np.random.default_rng(seed)
    decoder.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for name in PROMPT_KINDS if semantic is not None else PROMPT_KINDS[:2]:
            vals = []
            for group in by_length(targets):
                for i in range(0, len(group), 8):
                    ts = group[i : i + 8]
                    gt = torch.cat([t.masks for t in ts])  # (K, T, H, W)
                    dec = decode_targets(decoder, ts, [name] * gt.shape[0], rng, semantic)
                    pred = decoder.upsample(dec.low_res, tuple(gt.shape[-2:])) > 0
                    inter = (pred & gt).flatten(2).sum(-1).float()
                    union = (pred | gt).flatten(2).sum(-1).float().clamp(min=1)
                    vals += (inter / union).mean(1).tolist()
            out[name] = float(np.mean(vals))
    decoder.train()
    return out


def prompt_kinds(n: int, s: SamSettings, rng: np.random.Generator) -> list[str]:
    """How each of `n` objects is prompted in a training step (shares from `s`)."""
    out = []
    for _ in range(n):
        if s.what_share > 0 and rng.random() < s.what_share:  # no draw at 0: the points-and-boxes build as before
            out.append("what")
        else:
            out.append("box" if rng.random() < s.box_share else "point")
    return out


def pretrain_sam(decoder: MaskDecoder, s: SamSettings, log: Callable[[str], object] = print) -> dict[str, float]:
    """Train every SAM weight of `decoder` (built with `train_image_encoder=True`); returns the final mean IoUs."""
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    train = make_targets(s.pool, SPLIT, s.seed, s.num_frames)
    held = make_targets(s.eval_samples, SPLIT, s.seed, s.num_frames, offset=HELD_OUT_OFFSET)
    semantic = SemanticPrompts(decoder.prompt_width) if s.what_share > 0 else None
    params = [p for p in decoder.parameters() if p.requires_grad]
    params += list(semantic.parameters()) if semantic is not None else []
    opt, sched = adamw_warmup_cosine(params, s.lr, s.warmup, s.steps)
    decoder.train()
    batches = batch_indices(len(train), s.batch_size, s.seed)
    bar = tqdm(range(s.steps), desc="pretrain SAM")
    for step in bar:
        idx = next(batches)
        total = torch.zeros(())
        n_obj = sum(train[i].masks.shape[0] for i in idx)
        for ts in by_length([train[i] for i in idx]):
            gt = torch.cat([t.masks for t in ts])  # (K, T, H, W)
            dec = decode_targets(decoder, ts, prompt_kinds(gt.shape[0], s, rng), rng, semantic)
            for k in range(gt.shape[0]):  # per-object losses, as stage 3 computes them per sample
                valid = torch.ones(1, gt.shape[1], dtype=torch.bool)
                part = released_mask_losses(
                    dec.raw_multi[k : k + 1],
                    dec.ious_multi[k : k + 1],
                    dec.object_scores[k : k + 1],
                    gt[k : k + 1],
                    valid,
                    decoder.image_size,
                    s.focal,
                    s.dice,
                )
                loss = s.focal * part["focal"] + s.dice * part["dice"] + s.iou * part["iou"]
                total = total + (loss + s.objectness * part["objectness"]) / n_obj
        optimizer_step(total, opt, sched, params)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total.item():.3f}")
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            iou = mean_iou(decoder, held, s.seed, semantic)
            log(f"step {step + 1}: loss {total.item():.4f} held-out mean IoU {iou}")
    return mean_iou(decoder, held, s.seed, semantic)
