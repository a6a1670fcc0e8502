"""The `synthetic` source: procedurally generated shapes (see pixelqa.data.synthetic); the raw root is ignored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelqa.data.registry import Source, register_source
from pixelqa.data.schema import Sample
from pixelqa.data.synthetic import SPLIT_SIZES, make_sample


@register_source("synthetic")
class Synthetic(Source):
    """Generated samples: `items` are sample indices, so shard building runs in parallel workers."""

    splits = tuple(SPLIT_SIZES)
    seed = 0
    size = 112

    def items(self, root: Path, split: str) -> Sequence[int]:
        """Sample indices 0 .. SPLIT_SIZES[split] - 1."""
        self.check_split(split)
        return range(SPLIT_SIZES[split])

    def convert(self, root: Path, split: str, item: int) -> Iterator[Sample]:
        """One generated sample."""
        yield make_sample(int(item), split, seed=self.seed, size=self.size)
