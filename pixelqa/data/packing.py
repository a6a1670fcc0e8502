"""Cheap hand-over of collated batches from DataLoader workers: every tensor of a batch in one shared buffer.

A worker's batch reaches the training process pickled through shared memory, one shared-memory file per tensor
(a demo batch holds 27), and mapping each costs 0.1-0.5 ms on the receiving side. `pack` copies all tensors of a
batch into one uint8 buffer (each at a 64-byte aligned offset) and leaves placeholders in a copy of the batch;
pickling the result sends that one buffer, and unpickling (in the training process) rebuilds the batch with its
tensors as views of the buffer (`unpack`), so the DataLoader hands out an ordinary `Batch`.

Any structure of lists, tuples, dicts and dataclasses (`Batch`, `VisualPrompt`, `MemoryRef`) is walked; tensors
come back with the same dtype, shape and values (contiguous), everything else as it was.

`BackgroundReceiver` takes the batches off the workers' queue in a thread of the training process while the
training step runs, so that a step finds its batch ready instead of paying the hand-over itself.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
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


# ---------------------------------------------------------------------------------------------- receiving


_END = object()


class BackgroundReceiver:
    """An iterable over `loader` whose items a background thread receives ahead, `depth` at most.

    With DataLoader workers, taking a batch off the worker queue still costs the training process a few ms (queue
    read, unpickling, mapping the shared buffer, handing the next index to the worker's feeder thread); a thread
    does that while the training step runs (torch ops release the GIL), so the step finds its batch waiting. Once
    its queue is full again the thread pauses before receiving the next batch: receiving right when the consumer has
    taken one (unpickling holds the GIL for ~1 ms) would stall the consumer's own next lines (the demo's fetch stayed
    at ~6 ms a step without the pause); a moment later, the step is computing. The pause is `pause` seconds at most
    and a quarter of the consumer's recent interval between takes, so that steps shorter than `pause` are kept
    fed (a fixed pause capped the pace at `depth` batches per pause). Order and content
    are the loader's: one thread reads one iterator. Exceptions (a worker's error, strict-mode damage)
    are raised in the consumer at the item where they happened. Only for loaders with workers: collation in the
    main process seeds the global RNGs (`datamodule.seeded`), which must not happen beside a training step.
    """

    def __init__(self, loader: Any, depth: int = 2, pause: float = 0.02) -> None:
        if depth < 1:
            raise ValueError(f"depth: got {depth}, expected >= 1")
        if pause < 0:
            raise ValueError(f"pause: got {pause}, expected seconds >= 0")
        self.loader, self.depth, self.pause = loader, int(depth), float(pause)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> _Received:
        return _Received(iter(self.loader), self.depth, self.pause)


class _Received:
    """The consumer's side of one BackgroundReceiver pass; dropping it stops the thread (and the loader's workers)."""

    def __init__(self, it: Any, depth: int, pause: float) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._pace = _Pace(pause)
        # The thread holds the queue, the event, the pace and the loader iterator, never this object, so that
        # dropping it runs __del__, which stops the thread.
        thread = threading.Thread(
            target=_receive,
            args=(it, self._queue, self._stop, self._pace),
            name="pixelqa-batch-receiver",
            daemon=True,
        )
        thread.start()

    def __iter__(self) -> _Received:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            self._pace.took()
            return value
        self._done = True
        self._stop.set()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop receiving ahead; the thread ends within 0.1 s and lets go of the loader iterator."""
        self._done = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


class _Pace:
    """The consumer's pace: a moving average of the interval between its takes, and the pause it allows."""

    def __init__(self, pause: float, weight: float = 0.25) -> None:
        self.pause, self.weight = pause, weight
        self.last: float | None = None
        self.interval: float | None = None

    def took(self) -> None:
        """Note one take by the consumer (called from its thread; the receiver only reads)."""
        now = time.monotonic()
        if self.last is not None:
            gap = now - self.last
            self.interval = gap if self.interval is None else (1 - self.weight) * self.interval + self.weight * gap
        self.last = now

    def delay(self) -> float:
        """Seconds to wait before receiving the next batch once the queue is full."""
        return self.pause if self.interval is None else min(self.pause, self.interval / 4)


def _receive(it: Any, out: queue.Queue, stop: threading.Event, pace: _Pace) -> None:
    """Thread body: put ("item", x) for each item of `it`, then ("end", None), or ("error", exc) on an exception."""

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            item = next(it, _END)
            if item is _END:
                put(("end", None))
                return
            if not put(("item", item)):
                return
            if pace.pause and out.full():  # the consumer is not waiting: receive the next one while its step computes
                stop.wait(pace.delay())
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
        put(("error", err))
    finally:
        del it  # the loader iterator (and its worker processes) go now, not when the thread object is collected
