"""The evaluation loop shared by the benchmark protocols: shards -> collated batches -> one forward each.

Predictions are teacher-forced: the model reads the ground-truth conversation and every <SEG> of the reference
answer is decoded into masks; answers are scored by exact match of the arg-max tokens (see `scoring`), which
equals greedy decoding. (Free generation through `UniPixel.chat` would also score hallucinated or missing
<SEG> tokens; that protocol is not implemented here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pixelqa.batch import Batch
from pixelqa.data.schema import Sample


@dataclass
class EvalResult:
    """What a protocol returns: headline metrics, a result table (rows of equal keys) and overlay items."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    overlays: list[dict[str, Any]] = field(default_factory=list)


def eval_batches(
    model: Any, recipe: Any, source: str, split: str, limit: int | None = None
) -> Iterator[tuple[Batch, Any, dict[str, Sample]]]:
    """(batch on the model's device, model output, samples by key) over one exact pass of source/split."""
    from pixelqa.train.datamodule import EvalBatches, SourceIndex, build_synthetic, make_collator

    data = recipe.data
    if source == "synthetic" and data.build_if_missing:
        build_synthetic(data.shards, split, data.synthetic_val if split != "train" else data.synthetic_train)
    try:
        index = SourceIndex(data.shards, source, split)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; build them with: python -m pixelqa.data build {source} --root RAW --out {data.shards} "
            f"--split {split}"
        ) from None
    collate = make_collator(model.processor, data, recipe.model.memory.variant)
    keep: dict[str, Sample] = {}

    def remember(samples: list[Sample]) -> Batch:
        keep.clear()
        keep.update({s.key: s for s in samples})
        return collate(samples)

    ds = EvalBatches([index], remember, data.val_batch_size, recipe.seed, limit=limit, num_frames=data.num_frames)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for batch in ds:
            batch = batch.to(device)
            with torch.no_grad():
                out = model(batch)
            yield batch, out, dict(keep)
    finally:
        model.train(was)
