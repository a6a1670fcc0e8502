"""Reading shards: WebDataset pipelines -> Samples, weighted mixing, frame and visual-prompt sampling.

Training streams are infinite: each source is an endless, resampled shard stream (seeded per rank and
worker, so ranks and workers see different orders without splitting), shuffled in a buffer, and the
sources are mixed with probabilities proportional to ``repeat x samples`` (the paper's repeat factors).
Evaluation streams are one exact pass: the sorted shard list is split by rank, then by worker, read in
order, no shuffling; every shard is read by exactly one (rank, worker).

Shards are read through `pixelqa.data.shard_reader`: each is checked against its index file / manifest, and a
damaged record is skipped with a warning naming the shard and byte offset and counted in `ShardDataset.damage`
(`strict=True`: the first damage raises ShardDamageError). Records verified by their checksum are not re-validated
(the build validated them); records of shards without an index file are.
"""

from __future__ import annotations

import json
import logging
import os
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from pixelqa.data import masks
from pixelqa.data.prompts import PROMPT_MODES, resample_prompts
from pixelqa.data.schema import Media, ObjectTrack, Prompt, Sample
from pixelqa.data.shard_reader import Damage, DamageLog, RecordDamaged, RecordRef, iter_shard_records, to_sample

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- frames


def frame_indices(
    total: int, num: int, rng: np.random.Generator | None = None, must_include: Sequence[int] = ()
) -> list[int]:
    """Indices of `num` frames out of `total`, sorted; all frames when total <= num.

    rng None: the centre of each of `num` equal segments (evaluation); else a random frame per segment
    (training). Frames in `must_include` (prompt frames) replace the nearest chosen frame.
    """
    if total < 1 or num < 1:
        raise ValueError(f"total/num: got {total}/{num}, expected both >= 1")
    if total <= num:
        return list(range(total))
    edges = np.linspace(0, total, num + 1)
    if rng is None:
        chosen = [int((edges[i] + edges[i + 1]) / 2) for i in range(num)]
    else:
        chosen = [
            int(rng.integers(int(np.ceil(edges[i])), max(int(np.ceil(edges[i + 1])), int(np.ceil(edges[i])) + 1)))
            for i in range(num)
        ]
        chosen = [min(c, total - 1) for c in chosen]
    return force_frames(sorted(set(chosen)), must_include, total)


def force_frames(chosen: Sequence[int], need: Sequence[int], total: int) -> list[int]:
    """`chosen` (sorted frame indices) with every frame of `need` in it, each replacing the nearest chosen frame
    that is not itself needed (appended when every chosen frame is needed); sorted."""
    out = sorted(set(chosen))
    need = sorted({int(m) for m in need})
    for m in need:
        if not 0 <= m < total:
            raise ValueError(f"must_include: got frame {m}, expected indices in [0, {total - 1}]")
        if m in out:
            continue
        free = [c for c in out if c not in need]
        if free:
            out.remove(min(free, key=lambda c: abs(c - m)))
        out.append(m)
        out.sort()
    return out


def memory_objects(sample: Sample) -> list[int]:
    """Ids of the objects some user turn injects as memory (`memory_objects`), sorted."""
    return sorted({o for t in sample.turns for o in t.memory_objects})


class UnusableSampleError(ValueError):
    """A stored sample that cannot train (a memory object never visible): training redraws another one, counted."""


def check_memory_visible(sample: Sample) -> Sample:
    """`sample` unchanged; UnusableSampleError when a memory object has no non-empty mask on any of its frames.

    Such an object would silently drop out of the memory text (no <|mem|> without a visible mask) while the
    question still asks about it; the release raises on an empty memory mask too (its loader then retries).
    """
    for oid in memory_objects(sample):
        if not masks.visible_frames(sample.objects[oid].masks):
            raise UnusableSampleError(
                f"{sample.source}/{sample.key}: memory object {oid} has no visible mask on the sample's "
                f"{sample.media.num_frames} frames (annotated on {sorted(sample.objects[oid].masks)}), "
                "expected at least one"
            )
    return sample


def subsample_frames(sample: Sample, num_frames: int, rng: np.random.Generator | None = None) -> Sample:
    """`sample` cut to `num_frames` frames (random segments with `rng`, centres without), prompt frames kept.

    Samples with memory objects (region QA / captions) follow the release's VideoRefer rule: with two or more
    annotated frames (frames where a memory object has a mask) the frames are drawn among the annotated ones only
    (multi-frame mode); with one, over all frames with that one forced in (single-frame mode). Then every memory
    object keeps a frame where its mask is non-empty: one that the draw left without is given one of its visible
    frames (random with `rng`, the middle one without), replacing the nearest frame no prompt or object needs.
    A memory object with no visible mask at all raises UnusableSampleError (`check_memory_visible`).
    A sample whose text counts every frame (`meta["keep_all_frames"]`, e.g. Inst-IT's `<t>` tags) is left whole.
    """
    if sample.media.num_frames <= num_frames or sample.meta.get("keep_all_frames"):
        return check_memory_visible(sample)
    t = sample.media.num_frames
    need = [p.frame for p in sample.prompts]
    mem = memory_objects(sample)
    candidates = list(range(t))
    if mem:
        annotated = sorted({f for o in mem for f in sample.objects[o].masks})
        if len(annotated) >= 2:  # multi-frame mode: only annotated frames (prompt frames stay reachable)
            candidates = sorted(set(annotated) | set(need))
        else:  # single-frame mode: the whole (stored) video, the annotated frame forced in
            need += annotated
    pos = {f: i for i, f in enumerate(candidates)}
    drawn = frame_indices(len(candidates), num_frames, rng, must_include=[pos[f] for f in need])
    keep = [candidates[i] for i in drawn]
    if mem:
        for oid in mem:
            seen = [f for f in masks.visible_frames(sample.objects[oid].masks) if f in pos]
            if not seen:
                continue  # never visible: check_memory_visible below names it
            kept = [f for f in seen if f in keep]
            if kept:  # protect one of its kept frames from the replacements below
                need.append(kept[0])
            else:
                need.append(seen[int(rng.integers(0, len(seen)))] if rng is not None else seen[len(seen) // 2])
        keep = force_frames(keep, need, t)
    return check_memory_visible(select_frames(sample, keep))


def select_frames(sample: Sample, indices: Sequence[int]) -> Sample:
    """A new Sample restricted to `indices` (sorted); masks and prompts are renumbered, fps scaled."""
    idx = list(indices)
    t = sample.media.num_frames
    if idx == list(range(t)):
        return sample
    if not idx or sorted(set(idx)) != idx or idx[0] < 0 or idx[-1] >= t:
        raise ValueError(f"indices: got {idx}, expected sorted unique frame indices in [0, {t - 1}]")
    new_of = {old: new for new, old in enumerate(idx)}
    for i, p in enumerate(sample.prompts):
        if p.frame not in new_of:
            raise ValueError(f"indices: prompt {i} is on frame {p.frame}, which is not among {idx}")
    m = sample.media
    fps = m.fps * len(idx) / t if m.fps else m.fps  # the same duration now spanned by fewer frames
    media = Media(
        m.kind,
        [m.frames[i] for i in idx],
        m.size,
        m.ext,
        fps,
        [m.frame_ids[i] for i in idx] if m.frame_ids is not None else None,
    )
    objects = {
        oid: ObjectTrack({new_of[f]: r for f, r in o.masks.items() if f in new_of}, o.category, o.caption)
        for oid, o in sample.objects.items()
    }
    prompts = [Prompt(p.type, new_of[p.frame], p.object_id, p.coords, p.rle) for p in sample.prompts]
    meta = dict(sample.meta, source_frames=idx)
    return Sample(
        sample.key,
        sample.source,
        sample.split,
        sample.task,
        media,
        objects,
        prompts,
        sample.turns,
        sample.answer,
        sample.choices,
        meta,
    )


# ---------------------------------------------------------------------------------------------- masks


def used_objects(sample: Sample) -> list[int]:
    """Ids of the objects a training sample uses (its <|seg|> targets, memory objects, prompted objects), sorted."""
    ids = set(sample.seg_object_ids())
    ids.update(o for t in sample.turns for o in t.memory_objects)
    ids.update(p.object_id for p in sample.prompts if p.object_id is not None)
    return sorted(ids)


def object_masks(sample: Sample, object_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(K, T, H, W) bool masks and (K, T) bool annotated-flags of `object_ids` (repeats allowed) on every frame.

    Decoded by `masks.decode_stack`: the mask array is a transposed view (not C-contiguous), which
    `torch.from_numpy` takes without a copy; a frame where an object is not annotated stays all False.
    """
    t = sample.media.num_frames
    h, w = sample.media.size
    rles = []
    for oid in object_ids:
        if oid not in sample.objects:
            raise ValueError(f"object_ids: got {oid}, expected one of the sample's objects {sorted(sample.objects)}")
        own = sample.objects[oid].masks
        rles.extend(own.get(f) for f in range(t))
    flat = masks.decode_stack(rles, (h, w))  # (K * T, H, W)
    valid = np.array([r is not None for r in rles], dtype=bool).reshape(len(object_ids), t)
    return flat.reshape(len(object_ids), t, h, w), valid


# ---------------------------------------------------------------------------------------------- shards


def resolve_shards(path: str | Path, split: str | None = None) -> list[str]:
    """Tar files of a shard folder (``<source>/<split>``), of ``<source>`` + split, or a single .tar path; a folder
    whose manifests list a shard that is not there is a FileNotFoundError naming it."""
    from pixelqa.data.shards import missing_shards  # the builder's module (and its converters) only when listing

    p = Path(path)
    if p.suffix == ".tar":
        if not p.is_file():
            raise FileNotFoundError(f"shard: {p} does not exist")
        return [str(p)]
    for folder in ([p / split] if split else []) + [p]:
        tars = sorted(folder.glob("*.tar"))
        if tars:
            lost = missing_shards(folder)
            if lost:  # reading on would silently lose its samples (a 2% smaller dataset, unnoticed)
                more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
                raise FileNotFoundError(
                    f"shards: {lost[0]}{more}; restore it from where the folder came from, or rebuild {folder}"
                )
            return [str(t) for t in tars]
    raise FileNotFoundError(f"shards: no .tar files in {p}" + (f" or {p / split}" if split else ""))


def manifest_samples(urls: Sequence[str]) -> int | None:
    """Sample count of the shards from the manifests beside them (None when no manifest covers them)."""
    names = {Path(u).name for u in urls}
    total, covered = 0, set()
    for folder in sorted({Path(u).parent for u in urls}):
        for mp in sorted(folder.glob("manifest*.json")):
            for s in json.loads(mp.read_text()).get("shards", []):
                if s["name"] in names and s["name"] not in covered:
                    covered.add(s["name"])
                    total += s["samples"]
    return total if covered == names else None


def _rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed if initialised, else the RANK/WORLD_SIZE environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the DataLoader worker running this code."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass
class ShardSource:
    """One source of a mixture: its shard files and its repeat factor."""

    urls: list[str]
    repeat: float = 1.0
    samples: int | None = None  # from the manifest; None = unknown (then the weight is `repeat` alone)


class ShardDataset(IterableDataset):
    """Samples from shards: infinite weighted mixing for training, one exact pass for evaluation."""

    def __init__(
        self,
        sources: Sequence[ShardSource],
        train: bool = True,
        num_frames: int = 8,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        prompt_mode: str = "keep",
        box_jitter: float = 0.1,
        validate: bool = True,
        strict: bool = False,
    ) -> None:
        if not sources:
            raise ValueError("sources: got none, expected at least one ShardSource")
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode: got {prompt_mode!r}, expected one of {PROMPT_MODES}")
        if num_frames < 1:
            raise ValueError(f"num_frames: got {num_frames}, expected >= 1")
        for s in sources:
            if s.repeat <= 0:
                raise ValueError(f"repeat: got {s.repeat} for {s.urls[:1]}, expected > 0")
        self.sources = list(sources)
        self.train, self.num_frames, self.seed = train, num_frames, seed
        self.shuffle_buffer, self.prompt_mode, self.box_jitter, self.validate = (
            shuffle_buffer,
            prompt_mode,
            box_jitter,
            validate,
        )
        self.damage = DamageLog(strict).share()  # counts records lost to damage, DataLoader workers included
        weights = [s.repeat * (s.samples if s.samples is not None else 1) for s in self.sources]
        self.probs = [w / sum(weights) for w in weights]

    def __len__(self) -> int:
        """Samples of one exact pass (evaluation) when manifests give the counts; raises otherwise."""
        counts = [s.samples for s in self.sources]
        if self.train or any(c is None for c in counts):
            raise TypeError("len() is defined only for evaluation datasets whose shards have manifests")
        return int(sum(counts))

    def _to_sample(self, ref: RecordRef, record: dict) -> Sample:
        # to_sample checks the key and the frame headers whatever the checksum says: an index file can be crafted with
        # its shard, and it only shows that the bytes are unchanged
        sample = to_sample(record, ref)
        if self.validate and ref.digest is None:  # a record that matches its checksum is what the build validated
            try:
                sample.validate()
            except (ValueError, TypeError, RecursionError) as err:  # TypeError: a crafted value of another type
                raise RecordDamaged(
                    Damage(ref.shard, ref.start, f"record {ref.key!r} fails validation: {err}")
                ) from None
        return sample

    def _expand(self, shards: Iterator[dict]) -> Iterator[tuple[RecordRef, dict]]:
        """webdataset stage: shard urls -> checked (reference, record) pairs."""
        for shard in shards:
            yield from iter_shard_records(shard["url"], self.damage)

    def _records(self, urls: list[str], seed: int) -> Iterator[tuple[RecordRef, dict]]:
        """An endless, resampled, shuffled record stream of one source (training)."""
        pipe = wds.DataPipeline(
            wds.ResampledShards(urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            self._expand,
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=random.Random(seed + 1)),
        )
        return iter(pipe)

    def _transform(self, sample: Sample, rng: np.random.Generator | None) -> Sample:
        """Frame sampling (random segments in training, uniform in evaluation) and prompt sampling."""
        sample = subsample_frames(sample, self.num_frames, rng if self.train else None)
        return resample_prompts(sample, rng, self.prompt_mode, self.box_jitter)

    def __iter__(self) -> Iterator[Sample]:
        rank, world = _rank_world()
        worker, workers = _worker()
        if self.train:
            yield from self._iter_train(rank, worker)
        else:
            yield from self._iter_eval(rank, world, worker, workers)

    def _iter_train(self, rank: int, worker: int) -> Iterator[Sample]:
        base = zlib.crc32(f"{self.seed}-{rank}-{worker}".encode())
        rng = np.random.default_rng([self.seed, rank, worker])
        streams = [self._records(s.urls, base + 7919 * i) for i, s in enumerate(self.sources)]
        mix = random.Random(base)
        cum = np.cumsum(self.probs)
        while True:
            i = min(int(np.searchsorted(cum, mix.random(), side="right")), len(streams) - 1)
            ref, record = next(streams[i])
            try:
                sample = self._to_sample(ref, record)
            except RecordDamaged as err:
                self.damage.report(err.damage)
                continue
            yield self._transform(sample, rng)

    def _iter_eval(self, rank: int, world: int, worker: int, workers: int) -> Iterator[Sample]:
        urls = sorted(u for s in self.sources for u in s.urls)
        mine = urls[rank::world][worker::workers]
        for url in mine:
            for ref, record in iter_shard_records(url, self.damage, copy=False):  # consumed as read: no copies
                try:
                    sample = self._to_sample(ref, record)
                except RecordDamaged as err:
                    self.damage.report(err.damage)
                    continue
                # Per-sample seed from the key: the same prompts whatever the rank/worker layout. Evaluation samples
                # frames at segment centres, so only prompt resampling draws from it (a generator costs ~20 us).
                rng = (
                    None
                    if self.prompt_mode == "keep"
                    else np.random.default_rng([self.seed, zlib.crc32(sample.key.encode())])
                )
                yield self._transform(sample, rng)


def make_dataset(
    shard_dirs: Sequence[str | Path] | Mapping[str | Path, float],
    split: str | None = None,
    train: bool = True,
    num_frames: int = 8,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    shuffle_buffer: int = 1000,
    prompt_mode: str = "keep",
    box_jitter: float = 0.1,
    strict: bool = False,
) -> ShardDataset:
    """An IterableDataset of Samples over shard folders; wrap it in a DataLoader with a `Collator`.

    shard_dirs: shard folders (``SHARDS/<source>/<split>``, or ``SHARDS/<source>`` with `split`, or .tar
    files), or a mapping folder -> repeat factor. weights: repeat factors (default 1 each). A source's
    mixing probability is proportional to repeat x its manifest sample count. train=True: infinite,
    shuffled, resampled; train=False: one exact, ordered pass split over ranks and workers.
    prompt_mode: "keep" | "point_box" | "point" | "box" (see `prompts.resample_prompts`).
    strict: any damaged shard data raises ShardDamageError instead of being skipped and counted.
    """
    if isinstance(shard_dirs, Mapping):
        if weights is not None:
            raise ValueError("weights: give repeat factors either in the shard_dirs mapping or in weights, not both")
        weights = list(shard_dirs.values())
        shard_dirs = list(shard_dirs.keys())
    shard_dirs = list(shard_dirs)
    if weights is None:
        weights = [1.0] * len(shard_dirs)
    if len(weights) != len(shard_dirs):
        raise ValueError(f"weights: got {len(weights)} values, expected {len(shard_dirs)} (one per shard folder)")
    sources = []
    for d, w in zip(shard_dirs, weights):
        urls = resolve_shards(d, split)
        sources.append(ShardSource(urls, float(w), manifest_samples(urls)))
    return ShardDataset(
        sources,
        train=train,
        num_frames=num_frames,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        prompt_mode=prompt_mode,
        box_jitter=box_jitter,
        strict=strict,
    )
