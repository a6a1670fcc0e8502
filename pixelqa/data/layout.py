"""Where shards live on disk: one folder per source split, numbered tar files in it. Standard library only, so the
training and evaluation code can place shards without importing the shard writer."""

from __future__ import annotations

from pathlib import Path


def shard_dir(out: str | Path, source: str, split: str) -> Path:
    """The folder of one source split's shards: <out>/<source>/<split>/."""
    return Path(out) / source / split


def shard_name(source: str, split: str, index: int) -> str:
    """File name of shard `index`."""
    return f"{source}-{split}-{index:06d}.tar"
