"""Cheap hand-over of collated batches from DataLoader workers: every tensor of a batch in one shared buffer.

A worker's batch reaches the training process pickled through shared memory, one shared-memory file per tensor
(a demo batch holds 27), and mapping each costs 0.1-0.5 ms on the receiving side. `pack` copies all tensors of a
batch into one uint8 buffer (each at a 64-byte aligned offset) and leaves placeholders in a copy of the batch;
pickling the result sends that one buffer, and unpickling (in the training process) rebuilds the batch with its
tensors as views of the buffer (`unpack`), so the DataLoader hands out an ordinary `Batch`.

Any structure of lists, tuples, dicts and dataclasses (`Batch`, `VisualPrompt`, `MemoryRef`) is walked; tensors
come back with the same dtype, shape and values (contiguous), everything else as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

ALIGN = 64  # bytes; enough for any dtype's view of the buffer


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Placeholder of one packed tensor: where it lies in the buffer and what it is."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _walk(x: Any, leaf) -> Any:
    """`x` with every tensor (or, unpacking, every _Slot) replaced by `leaf(it)`; other values kept."""
    if isinstance(x, (torch.Tensor, _Slot)):
        return leaf(x)
    if isinstance(x, list):
        return [_walk(v, leaf) for v in x]
    if isinstance(x, tuple):
        return tuple(_walk(v, leaf) for v in x)
    if isinstance(x, dict):
        return {k: _walk(v, leaf) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x)(**{f.name: _walk(getattr(x, f.name), leaf) for f in dataclasses.fields(x) if f.init})
    return x


class PackedBatch:
    """A batch whose tensors lie in one buffer; it pickles as (buffer, skeleton) and unpickles as the batch."""

    def __init__(self, batch: Any) -> None:
        tensors: list[torch.Tensor] = []
        offset = 0

        def slot(t: torch.Tensor) -> _Slot:
            nonlocal offset
            if t.device.type != "cpu" or t.requires_grad:
                raise ValueError(f"batch tensor: got one on {t.device} (requires_grad={t.requires_grad}), expected CPU")
            s = _Slot(offset, t.dtype, tuple(t.shape))
            tensors.append(t)
            offset += (t.numel() * t.element_size() + ALIGN - 1) // ALIGN * ALIGN
            return s

        self.skeleton = _walk(batch, slot)
        self.buffer = torch.empty(max(offset, 1), dtype=torch.uint8)
        for t, s in zip(tensors, _slots(self.skeleton)):
            _view(self.buffer, s).copy_(t)

    def unpack(self) -> Any:
        """The batch, its tensors views of the buffer."""
        return unpack(self.buffer, self.skeleton)

    def __reduce__(self):
        return unpack, (self.buffer, self.skeleton)


def _slots(skeleton: Any) -> list[_Slot]:
    """The placeholders of a skeleton, in packing order."""
    found: list[_Slot] = []
    _walk(skeleton, lambda s: found.append(s))
    return found


def _view(buffer: torch.Tensor, s: _Slot) -> torch.Tensor:
    """The tensor of placeholder `s`: a view of `buffer`."""
    n = 1
    for d in s.shape:
        n *= d
    size = torch.empty((), dtype=s.dtype).element_size()
    return buffer[s.offset : s.offset + n * size].view(s.dtype).view(s.shape)


def pack(batch: Any) -> PackedBatch:
    """`batch` with all its tensors copied into one buffer (what a DataLoader worker should yield)."""
    return PackedBatch(batch)


def unpack(buffer: torch.Tensor, skeleton: Any) -> Any:
    """The structure `skeleton` with each placeholder replaced by its view of `buffer`."""
    return _walk(skeleton, lambda s: _view(buffer, s))
