"""ShardDataModule: a recipe's weighted source mixture as deterministic, resumable batches.

Training stream: slot j of the run (j = 0, 1, 2, ...) draws a source with probability proportional to
`num_samples x repeat` (paper Table 12), then that source's next sample in a per-epoch permutation. Every
choice comes from generators seeded by (seed, source, epoch), so the stream is a pure function of the seed:
resuming at optimizer step s skips the first s x accumulate batches without reading them and continues exactly.
Processes split the stream by slot (rank r of W takes slots j with j % W == r), DataLoader workers by batch.
Samples are read by random access into the tar shards (an index of member offsets built once per shard).

Validation: every sample of `data.val_sources` exactly once, in shard order (capped by `data.val_samples` and, in a
fit, by `eval.max_samples`: `validation_limit`), split across processes by index. A sample that cannot be scored
(a damaged record, or one `usable` rejects) is skipped; the pass's `expected` count says how many were asked for.
A sample of independent request/answer pairs (grouped expressions, semseg / part classes) is scored on the 3 pairs
its key draws (`pixelqa.data.collate.evaluation_pairs`): the same whatever the batch size, seed or process count.

Collation (`pixelqa.data.collate.Collator`) runs under an RNG seeded by (seed, batch index), so prompt sampling
and any other data randomness repeat after a resume too.

Redraws: a sample the collator cannot use (over-long after the pixel budgets, an undecodable frame, nothing left to
supervise) is replaced by another record of the same source, drawn from a generator seeded by (seed, slot,
attempt), up to `data.max_redraws` times (as the released training retries); each batch's `meta` carries the
counts (`redraws`, `dropped_slots`, `truncated_tokens`), which the training module sums and logs.

Group by type (`data.group_by_type`): every slot of one optimizer step, on every rank, comes from sources of one
data type (a source's type is the media kind of its first record: image or video), the type drawn per step with
probability proportional to its sources' weights: a rank that runs SAM on video does not wait for image ranks.

Damage (`pixelqa.data.shard_reader`): records found damaged when a shard is opened (truncation, bad headers) are
left out of the index, so the stream stays a pure function of (seed, step) over the intact records; a record found
damaged when read (checksum, JSON) is replaced by the next intact record of its source, the same on every rerun.
Either way it is logged with shard and byte offset and counted in `ShardDataModule.damage` (`data.strict`: fatal).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pixelqa.config import RecipeError
from pixelqa.data.collate import MAX_PAIRS, evaluation_pairs
from pixelqa.data.layout import shard_dir
from pixelqa.data.loader import UnusableSampleError
from pixelqa.data.packing import BackgroundReceiver, pack
from pixelqa.data.schema import Sample
from pixelqa.data.shard_reader import DamageLog, RecordDamaged, RecordRef, ShardDamageError, open_shard, read_sample

__all__ = ["RecordRef", "read_sample"]  # re-exported: random access is the shard reader's

SYNTHETIC = "synthetic"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- shard access


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))


def check_sources(data: Any) -> None:
    """Fail before any work when a real source's shard folder is missing, empty or an unfinished build (synthetic
    ones are built, or their build resumed, on first use)."""
    for group in ("sources", "val_sources"):
        for i, src in enumerate(getattr(data, group)):
            if src.repeat <= 0:
                raise RecipeError(f"data.{group}[{i}].repeat={src.repeat}: expected a positive repeat factor")
            folder = shard_dir(data.shards, src.name, src.split)
            if src.name == SYNTHETIC and data.build_if_missing:
                continue
            if _shards(folder):
                check_finished(data, group, i)
                continue
            build = f"python -m pixelqa.data build {src.name} --root RAW --out {data.shards} --split {src.split}"
            hint = (
                f"build them with: {build}"
                if src.name != SYNTHETIC
                else "set data.build_if_missing=true to build them on first use"
            )
            raise RecipeError(f"data.{group}[{i}] ({src.name}/{src.split}): no shards in {folder}; {hint}")


def check_finished(data: Any, group: str, i: int) -> None:
    """Fail when the shards of `data.<group>[i]` are an unfinished build (a stopped or running `data build`): its
    first shards would be trained on, or scored, as if they were the whole source."""
    from pixelqa.data.shards import unfinished_build

    src = getattr(data, group)[i]
    folder = shard_dir(data.shards, src.name, src.split)
    unfinished = unfinished_build(folder, data.shards)
    if unfinished is not None:
        raise RecipeError(
            f"data.{group}[{i}] ({src.name}/{src.split}): the shards in {folder} are {unfinished.state} "
            f"({unfinished.reason}); {unfinished.action}: {unfinished.command}"
        )


def build_synthetic(root: str | Path, split: str, num_samples: int) -> Path:
    """Build the synthetic shards of `split` (num_samples samples) unless they exist; returns the folder."""
    from pixelqa.data.shards import build_shards, unfinished_build

    folder = shard_dir(root, SYNTHETIC, split)
    if _shards(folder) and unfinished_build(folder) is None:
        return folder

    print(f"building synthetic/{split} shards ({num_samples} samples) in {folder} (first use only)", flush=True)
    per_shard = max(8, num_samples // 8)  # several shards: enough to split across processes and workers
    # two fits starting together on one shards folder (two `make demo`): the second waits for the first's build,
    # seconds long, instead of failing with advice for a flag fit does not have
    build_shards(
        SYNTHETIC, ".", root, split=split, max_samples=num_samples, max_count=per_shard, progress=False, wait=True
    )
    return folder


def shard_index(path: str) -> tuple[RecordRef, ...]:
    """The intact records of a tar shard in order, with byte offsets for random access (cached per file state)."""
    return open_shard(path).refs


class SourceIndex:
    """All intact records of one (source, split), in shard order; damage found on opening goes to `damage`."""

    def __init__(
        self, root: str | Path, name: str, split: str, repeat: float = 1.0, damage: DamageLog | None = None
    ) -> None:
        self.name, self.split, self.repeat = name, split, float(repeat)
        self.folder = shard_dir(root, name, split)
        self.damage = damage if damage is not None else DamageLog()
        paths = _shards(self.folder)
        if not paths:
            raise FileNotFoundError(f"{name}/{split}: no shards in {self.folder}")
        self.refs: list[RecordRef] = []
        self.expected = 0  # records the build wrote (index files / manifests), damaged ones included
        for p in paths:
            contents = open_shard(str(p))
            for d in contents.damage:
                self.damage.report(d)
            self.refs.extend(contents.refs)
            lost = sum(d.records for d in contents.damage)
            self.expected += contents.expected if contents.expected is not None else len(contents.refs) + lost
        if not self.refs:
            # every record damaged: a data error (one line from the recipe CLIs), not a score of nothing
            raise ShardDamageError(
                f"{name}/{split}: shards in {self.folder} hold no intact samples ({self.damage.count} damaged "
                "records); rebuild them (python -m pixelqa.data build ...)"
            )

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def kind(self) -> str:
        """The data type of the source: the media kind ("image" | "video") of its first intact record."""
        if getattr(self, "_kind", None) is None:
            first = next((x for x in (self.read(i) for i in range(min(len(self), 16))) if x is not None), None)
            self._kind = first.media.kind if first is not None else "image"
        return self._kind

    def read(self, idx: int) -> Sample | None:
        """Sample `idx`, or None (reported to `damage`) when its record is damaged."""
        try:
            return read_sample(self.refs[idx])
        except RecordDamaged as err:
            self.damage.report(err.damage)
            return None


# ---------------------------------------------------------------------------------------------- streams


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with python, numpy and torch RNGs seeded by `seed`; the outer states are restored after."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(th)


def batch_seed(seed: int, batch_index: int, salt: int = 0) -> int:
    """The RNG seed of one batch's collation."""
    return (int(seed) * 2_654_435_761 + int(batch_index) * 40_503 + salt * 97 + 1) % (2**31 - 1)


class MixtureSchedule:
    """The deterministic sequence of (source index, record index) of a training mixture, slot by slot."""

    CHUNK = 4096  # source choices are drawn in chunks: slot j uses chunk j // CHUNK

    def __init__(self, sizes: Sequence[int], repeats: Sequence[float], seed: int) -> None:
        if not sizes:
            raise ValueError("data.sources: got an empty list, expected at least one source")
        weights = np.asarray(sizes, dtype=np.float64) * np.asarray(repeats, dtype=np.float64)
        self.probs = weights / weights.sum()
        self.sizes = list(sizes)
        self.seed = int(seed)

    def _choices(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 17, chunk])
        return rng.choice(len(self.sizes), size=self.CHUNK, p=self.probs)

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 29, source, epoch]).permutation(self.sizes[source])

    def iterate(self, start_slot: int = 0) -> Iterator[tuple[int, int, int]]:
        """(slot, source, record index) for slots start_slot, start_slot + 1, ... (forever)."""
        counts = [0] * len(self.sizes)  # draws of each source before the current slot
        chunk = 0
        while (chunk + 1) * self.CHUNK <= start_slot:  # fast-forward whole chunks by counting
            counts = [c + int(n) for c, n in zip(counts, np.bincount(self._choices(chunk), minlength=len(counts)))]
            chunk += 1
        perms: dict[tuple[int, int], np.ndarray] = {}
        slot = chunk * self.CHUNK
        while True:
            choices = self._choices(chunk)
            for s in choices:
                s = int(s)
                k = counts[s]
                counts[s] += 1
                if slot >= start_slot:
                    epoch, pos = divmod(k, self.sizes[s])
                    if (s, epoch) not in perms:
                        perms = {key: v for key, v in perms.items() if key[0] != s}
                        perms[(s, epoch)] = self._perm(s, epoch)
                    yield slot, s, int(perms[(s, epoch)][pos])
                slot += 1
            chunk += 1


class GroupedMixtureSchedule(MixtureSchedule):
    """A MixtureSchedule whose slots of one optimizer step (`per_step` consecutive slots) share one data type.

    The type of each step is drawn with probability proportional to the total weight of its sources, then each
    slot's source among that type's sources by their weights; still a pure function of (seed, slot).
    """

    def __init__(
        self, sizes: Sequence[int], repeats: Sequence[float], seed: int, types: Sequence[str], per_step: int
    ) -> None:
        super().__init__(sizes, repeats, seed)
        if len(types) != len(sizes):
            raise ValueError(f"types: got {len(types)} entries for {len(sizes)} sources, expected one per source")
        if per_step < 1:
            raise ValueError(f"per_step: got {per_step}, expected >= 1")
        self.per_step = int(per_step)
        self.steps_per_chunk = max(1, 4096 // self.per_step)
        self.CHUNK = self.steps_per_chunk * self.per_step  # chunks hold whole steps
        self.types = sorted(set(types))
        self.members = [np.array([i for i, t in enumerate(types) if t == k]) for k in self.types]
        self.type_probs = np.array([self.probs[m].sum() for m in self.members])

    def _choices(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 41, chunk])
        step_types = rng.choice(len(self.types), size=self.steps_per_chunk, p=self.type_probs)
        out = np.empty((self.steps_per_chunk, self.per_step), dtype=np.int64)
        for k, members in enumerate(self.members):
            p = self.probs[members] / self.probs[members].sum()
            drawn = members[rng.choice(len(members), size=(self.steps_per_chunk, self.per_step), p=p)]
            out[step_types == k] = drawn[step_types == k]
        return out.reshape(-1)

    def step_type(self, step: int) -> str:
        """The data type of optimizer step `step`."""
        chunk, pos = divmod(int(step), self.steps_per_chunk)
        rng = np.random.default_rng([self.seed, 41, chunk])
        return self.types[int(rng.choice(len(self.types), size=self.steps_per_chunk, p=self.type_probs)[pos])]


def _worker() -> tuple[int, int]:
    """(number of DataLoader workers, this worker's id); (1, 0) in the main process."""
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return workers, worker


def handed_over(batch: Any) -> Any:
    """`batch` as this process should yield it: packed into one shared buffer in a DataLoader worker.

    The training process receives a worker's batch as one shared-memory buffer instead of one per tensor (27 for a
    demo batch, 0.1-0.5 ms each to map) and gets the same batch back, its tensors views of that buffer
    (`pixelqa.data.packing`); in the main process the batch is returned as is.
    """
    return pack(batch) if get_worker_info() is not None else batch


def validation_limit(data: Any, max_samples: int | None = None) -> int | None:
    """The validation samples a fit scores (the first N; None: all): `data.val_samples` capped by `eval.max_samples`,
    so the teacher-forced pass, the generation pass and the evaluate command fit prints all score the same ones."""
    caps = [int(c) for c in (getattr(data, "val_samples", None), max_samples) if c is not None]
    return min(caps) if caps else None


def usable(sample: Sample, num_frames: int) -> Sample | None:
    """`prepare_sample` for evaluation (central frames); None, with a warning naming it, for a sample that cannot be
    scored (a memory object never visible): one bad record must not stop a validation, and the shortfall against
    the expected count is reported with the scores."""
    try:
        return prepare_sample(sample, num_frames, None)
    except UnusableSampleError as err:
        log.warning("unusable sample, not scored: %s", err)
        return None


def prepare_sample(sample: Sample, num_frames: int, rng: np.random.Generator | None) -> Sample:
    """Frame sampling as the data loader does it: random segments with `rng` (training), centres without."""
    from pixelqa.data.loader import subsample_frames

    return subsample_frames(sample, num_frames, rng)


class TrainBatches(IterableDataset):
    """Collated training batches of this process, starting at `start_batch` (batches already consumed)."""

    def __init__(
        self,
        sources: Sequence[SourceIndex],
        collate: Callable[[list[Sample]], Any],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        num_frames: int = 8,
        prompt_mode: str = "keep",
        max_redraws: int = 10,
        group_per_step: int | None = None,
        memory_prompts: str = "keep",
    ) -> None:
        self.sources = list(sources)
        self.memory_prompts = memory_prompts
        self.max_redraws = int(max_redraws)
        self.num_frames = int(num_frames)
        self.prompt_mode = prompt_mode
        self.collate = collate
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self.start_batch = int(start_batch)
        sizes, repeats = [len(s) for s in self.sources], [s.repeat for s in self.sources]
        if group_per_step:  # slots per optimizer step, all ranks: batch x world x accumulate
            kinds = [s.kind for s in self.sources]
            self.schedule = GroupedMixtureSchedule(sizes, repeats, seed, kinds, group_per_step)
        else:
            self.schedule = MixtureSchedule(sizes, repeats, seed)

    def slots(self, batch: int) -> range:
        """Global mixture slots of this process's `batch`-th batch."""
        first = (batch * self.batch_size) * self.world + self.rank
        return range(first, first + self.batch_size * self.world, self.world)

    def __iter__(self) -> Iterator[Any]:
        workers, worker = _worker()
        batch = self.start_batch
        while True:
            # counted from the resume position: the DataLoader asks worker 0 first, so it must hold start_batch
            if (batch - self.start_batch) % workers == worker:
                if hasattr(self.collate, "encode") and hasattr(self.collate, "assemble"):
                    with seeded(batch_seed(self.seed, batch * self.world + self.rank)):
                        yield handed_over(self._redrawn_batch(batch))
                else:  # a plain collate function: no per-sample redraws
                    samples = [self._sample(slot) for slot in self.slots(batch)]
                    with seeded(batch_seed(self.seed, batch * self.world + self.rank)):
                        yield handed_over(self.collate(samples))
            batch += 1

    def _redrawn_batch(self, batch: int) -> Any:
        """The collated batch, each unusable sample replaced by up to `max_redraws` other draws of its source."""
        encs: list[dict] = []
        lost = 0  # slots with no usable draw, reported in the next sample's meta
        for slot in self.slots(batch):
            s, idx = self._lookup(slot)
            enc = None
            for attempt in range(self.max_redraws + 1):
                if attempt:  # another record of the same source, the same on every rerun
                    idx = int(np.random.default_rng([self.seed, 37, slot, attempt]).integers(len(self.sources[s])))
                try:
                    enc = self.collate.encode(self._sample(slot, (s, idx), attempt))
                except UnusableSampleError as err:  # one bad record must not stop a run: redrawn like the others
                    log.warning("unusable sample, redrawn: %s", err)
                    enc = None
                if enc is not None:
                    enc["extra_meta"] = {"redraws": attempt, "dropped_slots": lost}
                    lost = 0
                    encs.append(enc)
                    break
            if enc is None:
                lost += 1
        if not encs:
            raise NoUsableSampleError(
                f"batch {batch}: no usable sample in {len(self.slots(batch))} slots after {self.max_redraws} redraws "
                "each (see the collate warnings); check the pixel budgets and data.max_tokens"
            )
        encs[0]["extra_meta"]["dropped_slots"] += lost
        return self.collate.assemble(encs)

    def _sample(self, slot: int, at: tuple[int, int] | None = None, attempt: int = 0) -> Sample:
        s, idx = self._lookup(slot) if at is None else at
        # per slot (and redraw): frames and prompts repeat after a resume
        rng = np.random.default_rng([self.seed, 31, slot] + ([attempt] if attempt else []))
        source = self.sources[s]
        for step in range(len(source)):  # a damaged record: the next intact one, the same on every rerun
            sample = source.read((idx + step) % len(source))
            if sample is not None:
                break
        else:
            raise DamagedSourceError(
                f"{source.name}/{source.split}: every record in {source.folder} is damaged (each named in a warning "
                "above); rebuild its shards with python -m pixelqa.data build"
            )
        sample = prepare_sample(sample, self.num_frames, rng)
        if self.prompt_mode != "keep":
            from pixelqa.data.prompts import resample_prompts

            sample = resample_prompts(sample, rng, self.prompt_mode)
        if self.memory_prompts == "point_box":
            from pixelqa.data.prompts import redraw_memory_prompts

            sample = redraw_memory_prompts(sample, rng)
        return sample

    def _lookup(self, slot: int) -> tuple[int, int]:
        # The schedule is walked forward lazily; a cached iterator serves increasing slots in O(1) each.
        it = getattr(self, "_it", None)
        if it is None or slot < self._it_next:
            self._it = self.schedule.iterate(slot)
            self._it_next = slot
        while True:
            j, s, idx = next(self._it)
            self._it_next = j + 1
            if j == slot:
                return s, idx


class EveryRankError(RecipeError):
    """A recipe error that every process of a distributed run raises alike (it depends on the recipe and the number
    of processes only): rank 0 reports it, the other ranks exit with status 2 without repeating it (`pixelqa.fit`)."""


class WorkerRecipeError(RecipeError):
    """A data error the user must fix, raised where a DataLoader worker may raise it: one line, exit status 2. From a
    worker it reaches the training process rebuilt from a message with the worker's traceback in front (torch's
    ExceptionWrapper): only its own last line is kept."""

    def __init__(self, message: str) -> None:
        lines = str(message).strip().splitlines()
        last = lines[-1] if lines else str(message)
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])


class NoUsableSampleError(WorkerRecipeError):
    """A training batch without a usable sample after every redraw (pixel budgets or data.max_tokens too small for
    the data)."""


class DamagedSourceError(WorkerRecipeError):
    """A training source whose every record is damaged: nothing to draw a replacement from."""


class EvalBatches(IterableDataset):
    """Every sample of the given sources once, in order, split across processes by index and workers by batch."""

    def __init__(
        self,
        sources: Sequence[SourceIndex],
        collate: Callable[[list[Sample]], Any],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        limit: int | None = None,
        num_frames: int = 8,
        max_pairs: int | None = MAX_PAIRS,
    ) -> None:
        self.num_frames = int(num_frames)
        self.max_pairs = max_pairs  # pairs kept of a sample of independent pairs (the collator's max_pairs)
        self.sources = list(sources)
        refs = [(i, j) for i, s in enumerate(self.sources) for j in range(len(s))]
        refs = refs[:limit] if limit is not None else refs
        if len(refs) < world:  # every process must run the pass (Lightning stops a process with none, mid-setup)
            raise EveryRankError(
                f"data.val_sources / data.val_samples / eval.max_samples: {len(refs)} validation samples for {world} "
                "processes; "
                "expected at least one per process (add validation samples or use fewer devices)"
            )
        self.refs = refs[rank::world]
        expected = sum(s.expected for s in self.sources)
        self.expected = min(expected, limit) if limit is not None else expected  # all processes together
        self.collate = collate
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def __len__(self) -> int:
        return (len(self.refs) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        workers, worker = _worker()
        for b in range(len(self)):
            if b % workers != worker:
                continue
            chunk = self.refs[b * self.batch_size : (b + 1) * self.batch_size]
            read = [self.sources[i].read(j) for i, j in chunk]
            samples = [p for p in (usable(x, self.num_frames) for x in read if x is not None) if p is not None]
            if not samples:
                continue  # every record of this batch is damaged (each reported)
            # the pairs scored: a function of the sample's key, not of the batch it falls in (nor of seed or rank)
            samples = [evaluation_pairs(x, self.max_pairs) for x in samples]
            with seeded(batch_seed(self.seed, b, salt=1)):
                yield handed_over(self.collate(samples))


# ---------------------------------------------------------------------------------------------- collate


def make_collator(processor: Any, data: Any, memory_variant: str) -> Callable[[list[Sample]], Any]:
    """The data package's Collator with the recipe's frames, token cap and pixel budgets (`pixelqa.data.budgets`)."""
    from pixelqa.data.budgets import PixelBudget, apply_budget
    from pixelqa.data.collate import Collator

    try:
        budget = PixelBudget.from_data(data)
    except ValueError as err:
        raise RecipeError(f"data: {err}") from None
    apply_budget(processor, budget)  # the processor's defaults too, for callers that do not go through the Collator
    return Collator(
        processor, num_frames=data.num_frames, max_tokens=data.max_tokens, memory_variant=memory_variant, budget=budget
    )


# ---------------------------------------------------------------------------------------------- module


class ShardDataModule(L.LightningDataModule):
    """Training mixture and validation pass of a recipe's `data` section, as collated `Batch`es (`max_samples`: the
    recipe's `eval.max_samples`, a further cap on the validation samples)."""

    def __init__(
        self,
        data: Any,
        processor: Any,
        memory_variant: str = "memory_bank",
        seed: int = 0,
        collate: Callable[[list[Sample]], Any] | None = None,
        max_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.val_limit = validation_limit(data, max_samples)  # the first N validation samples (None: all)
        self.processor = processor
        self.memory_variant = memory_variant
        self.seed = int(seed)
        self._collate = collate
        self.damage = DamageLog(strict=bool(getattr(data, "strict", False))).share()
        self.train_sources: list[SourceIndex] = []
        self.val_sources: list[SourceIndex] = []

    @property
    def collate(self) -> Callable[[list[Sample]], Any]:
        """The collate function (built on first use)."""
        if self._collate is None:
            self._collate = make_collator(self.processor, self.data, self.memory_variant)
        return self._collate

    def prepare_data(self) -> None:
        """Build the synthetic shards on first use (local rank 0 only)."""
        check_sources(self.data)
        sizes = {"train": self.data.synthetic_train, "val": self.data.synthetic_val}
        for src in list(self.data.sources) + list(self.data.val_sources):
            if src.name == SYNTHETIC and self.data.build_if_missing:
                build_synthetic(self.data.shards, src.split, sizes.get(src.split, self.data.synthetic_val))

    def setup(self, stage: str | None = None) -> None:
        """Index the shards of every source; a training fingerprint taken before synthetic shards were built on first
        use gets their identity now, before any checkpoint records it."""
        if not self.train_sources and stage in (None, "fit"):
            self.train_sources = [
                SourceIndex(self.data.shards, s.name, s.split, s.repeat, self.damage) for s in self.data.sources
            ]
            # pixelqa.fit fingerprints the stream before prepare_data builds missing synthetic shards; left unknown,
            # a resume could not tell whether that source changed (the module saves this dict in checkpoints)
            fingerprint = getattr(self.trainer.lightning_module, "stream_fingerprint", None) if self.trainer else None
            if isinstance(fingerprint, dict):
                from pixelqa.train.guards import fill_unknown

                fill_unknown(fingerprint, self.data)
        if not self.val_sources:
            self.val_sources = [
                SourceIndex(self.data.shards, s.name, s.split, damage=self.damage) for s in self.data.val_sources
            ]

    def damage_metrics(self) -> dict[str, float]:
        """{"data/damaged_records": n} (records lost to shard damage, all workers), also logged to the run."""
        metrics = {"data/damaged_records": float(self.damage.count)}
        trainer = self.trainer
        if trainer is not None and trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> Any:
        """Batches from the resume position (global_step x accumulate batches skipped, not read), one optimizer
        step at a time (`pixelqa.train.normalise.StepGrouper`: the step's loss counts travel with each batch)."""
        from pixelqa.train.normalise import StepGrouper

        rank, world = self._rank_world()
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        start = trainer.global_step * accumulate if trainer is not None else 0
        per_step = self.data.batch_size * world * accumulate if getattr(self.data, "group_by_type", False) else None
        ds = TrainBatches(
            self.train_sources,
            self.collate,
            self.data.batch_size,
            self.seed,
            rank,
            world,
            start,
            self.data.num_frames,
            self.data.prompt_mode,
            max_redraws=int(getattr(self.data, "max_redraws", 10)),
            group_per_step=per_step,
            memory_prompts=str(getattr(self.data, "memory_prompts", "keep")),
        )
        loader = self._loader(ds)
        # With workers, a thread takes their batches off the queue while the step runs (pixelqa.data.packing)
        return StepGrouper(BackgroundReceiver(loader) if loader.num_workers else loader, accumulate)

    def val_dataloader(self) -> DataLoader:
        """One exact pass over the validation split(s)."""
        rank, world = self._rank_world()
        ds = EvalBatches(
            self.val_sources,
            self.collate,
            self.data.val_batch_size,
            self.seed,
            rank,
            world,
            self.val_limit,
            self.data.num_frames,
            max_pairs=getattr(self.collate, "max_pairs", MAX_PAIRS),
        )
        return self._loader(ds)

    def _loader(self, ds: IterableDataset) -> DataLoader:
        n = int(self.data.num_workers)
        return DataLoader(
            ds, batch_size=None, num_workers=n, persistent_workers=False, prefetch_factor=2 if n else None
        )


def shard_stats(root: str | Path, name: str, split: str) -> dict:
    """The manifest of a shard folder (for printing); {} when it has none."""
    folder = shard_dir(root, name, split)
    manifests = sorted(folder.glob("manifest*.json"))
    return json.loads(manifests[0].read_text()) if manifests else {}
