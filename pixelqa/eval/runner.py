"""The evaluation loop shared by the benchmark protocols: shards -> collated batches -> one forward each.

Predictions are teacher-forced: the model reads the ground-truth conversation and every <|seg|> of the reference
answer is decoded into masks; answers are scored by exact match of the arg-max tokens (see `scoring`), which
equals greedy decoding. Free generation, which also scores missing or extra <|seg|> tokens, is
`pixelqa.eval.synthetic_generate` (the synthetic split) and `pixelqa.eval.official` (the paper's benchmarks).

Every pass counts the samples it scored against the samples the shards should hold (`counting_passes`), so a score
on a subset (damaged records skipped, see `pixelqa.data.shard_reader`) is never silent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from pixelqa.batch import Batch
from pixelqa.data.schema import Sample

# The synthetic tables' last row: its J&F pools every scored mask, its answer_acc only the QA tasks (the qa_acc
# metric), beside per-task rows where a segmentation task shows its own answer accuracy; no comma, so CSVs need no
# quotes
POOLED = "all (J&F: seg tasks; answer_acc: QA tasks)"


@dataclass
class EvalResult:
    """What a protocol returns: headline metrics, a result table (rows of equal keys) and overlay items."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    overlays: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassCount:
    """Samples one evaluation pass scored, out of those its shards should hold; records lost to damage."""

    source: str
    split: str
    expected: int
    scored: int = 0
    damaged: int = 0
    available: int | None = None  # samples the shards hold when a limit (eval.max_samples) cut `expected` below it


class BenchmarkDataError(ValueError):
    """Benchmark shards whose samples a protocol cannot score as they are (fields missing or inconsistent between
    samples); the message names the benchmark and a sample. The CLI prints it as one line (exit status 2)."""


_COLLECTORS: list[list[PassCount]] = []


@contextmanager
def counting_passes() -> Iterator[list[PassCount]]:
    """Collect the `PassCount` of every `eval_batches` pass run inside the block (protocols need not pass it on)."""
    passes: list[PassCount] = []
    _COLLECTORS.append(passes)
    try:
        yield passes
    finally:
        _COLLECTORS.remove(passes)


def register_pass(count: PassCount) -> None:
    """Report a pass that reads samples without `eval_batches` (free generation) to the open `counting_passes`."""
    for passes in _COLLECTORS:
        passes.append(count)


def eval_batches(
    model: Any, recipe: Any, source: str, split: str, limit: int | None = None
) -> Iterator[tuple[Batch, Any, dict[str, Sample]]]:
    """(batch on the model's device, model output, samples by key) over one exact pass of source/split."""
    from pixelqa.data.shard_reader import DamageLog
    from pixelqa.train.datamodule import EvalBatches, SourceIndex, build_synthetic, make_collator

    data = recipe.data
    if source == "synthetic" and data.build_if_missing:
        build_synthetic(data.shards, split, data.synthetic_val if split != "train" else data.synthetic_train)
    damage = DamageLog(strict=bool(getattr(data, "strict", False)))
    try:
        index = SourceIndex(data.shards, source, split, damage=damage)
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
    count = PassCount(source, split, ds.expected, available=index.expected if index.expected > ds.expected else None)
    register_pass(count)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for batch in ds:
            batch = batch.to(device)
            with torch.no_grad():
                out = model(batch)
            count.scored += len(keep)
            count.damaged = damage.count
            yield batch, out, dict(keep)
        count.damaged = damage.count
    finally:
        model.train(was)
