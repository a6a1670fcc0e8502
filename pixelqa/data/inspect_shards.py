"""Looking at shards: print samples, render mask/prompt overlays to PNG, count samples per source and task.

Both read through `pixelqa.data.shard_reader`: damaged records are skipped with a warning naming shard and byte
offset, counted, and the count is printed (`strict=True`: the first damage raises ShardDamageError); so is a shard
that a folder's manifest lists and that is not there, with all the samples it held. `inspect` also
validates each sample it prints (a record that fails is damage too) and names an overlay after its sample's key,
which the reader has checked to be a plain file name (`overlay_path` keeps any other inside --out). Shards of a
build that has not finished (a progress file, or no manifest: `pixelqa.data.shards.unfinished_build`) are marked
INCOMPLETE, with the command that finishes the build: their counts are part of a source, not all of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from pixelqa.data import masks
from pixelqa.data.schema import Sample, encode_frame, is_key, make_key
from pixelqa.data.shard_reader import Damage, DamageLog, RecordDamaged, iter_shard_records, to_sample
from pixelqa.data.shard_reader import iter_samples as iter_checked_samples
from pixelqa.data.shards import Unfinished, missing_shards, unfinished_build

# Distinct overlay colours (RGB) for object ids 1, 2, ...
PALETTE = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 220, 0), (255, 0, 255), (0, 230, 230), (255, 140, 0)]


def find_shards(paths: Sequence[str | Path]) -> list[Path]:
    """Tar files named directly, or found (recursively) under folders, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".tar":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("*.tar")))
        else:
            raise FileNotFoundError(f"shards: {p} is neither a .tar file nor a folder")
    if not found:
        raise FileNotFoundError(f"shards: no .tar files under {[str(p) for p in paths]}")
    return found


def report_missing_shards(paths: Sequence[str | Path], damage: DamageLog) -> None:
    """Report to `damage` every shard that a manifest under the folders of `paths` lists and that is not there, with
    the samples it held (counted as lost; strict: fatal). Tar files named one by one are read as they are."""
    for p in map(Path, paths):
        if p.is_dir():
            for folder in sorted({m.parent for m in p.rglob("manifest*.json")}):
                for lost in missing_shards(folder):
                    damage.report(
                        Damage(
                            str(lost.path),
                            None,
                            f"missing ({lost.samples} samples, listed by {lost.manifest})",
                            lost.samples,
                        )
                    )


def unfinished_folders(shards: Sequence[Path]) -> dict[Path, Unfinished]:
    """The folders of `shards` whose build has not finished, with why and the command that finishes it."""
    out: dict[Path, Unfinished] = {}
    for folder in sorted({p.parent for p in shards}):
        unfinished = unfinished_build(folder)
        if unfinished is not None:
            out[folder] = unfinished
    return out


def incomplete_lines(unfinished: dict[Path, Unfinished]) -> list[str]:
    """One line per unfinished build: the folder, why, and the command that finishes it."""
    return [
        f"INCOMPLETE BUILD {folder}: {u.reason}; its shards hold part of {folder.parent.name}/{folder.name} only; "
        f"{u.action}: {u.command}"
        for folder, u in unfinished.items()
    ]


def describe(sample: Sample) -> str:
    """A few human-readable lines about a sample."""
    m = sample.media
    lines = [
        f"{sample.key}  [{sample.source}/{sample.split}, task {sample.task}]  {m.kind}: {m.num_frames} "
        f"frame(s) {m.size[0]}x{m.size[1]} {m.ext}" + (f" @ {m.fps:g} fps" if m.fps else "")
    ]
    for oid, o in sorted(sample.objects.items()):
        areas = [masks.area(r) for _, r in sorted(o.masks.items())]
        label = o.category or o.caption or ""
        lines.append(f"  object [{oid}] {label}: {len(o.masks)} annotated frame(s), areas {areas[:8]}")
    for i, p in enumerate(sample.prompts):
        where = f"coords {[round(c, 1) for c in p.coords]}" if p.coords else f"mask area {masks.area(p.rle)}"
        lines.append(f"  prompt {i}: {p.type} on frame {p.frame}, object {p.object_id}, {where}")
    for t in sample.turns:
        extra = f"  (seg -> {t.seg_objects})" if t.seg_objects else ""
        extra += f"  (memory of {t.memory_objects})" if t.memory_objects else ""
        lines.append(f"  {t.role}: {t.text}{extra}")
    if sample.choices:
        lines.append(f"  choices: {sample.choices}")
    if sample.answer is not None:
        lines.append(f"  answer: {sample.answer}")
    return "\n".join(lines)


def render_overlay(sample: Sample, max_frames: int = 8) -> np.ndarray:
    """Frames side by side with every object's mask tinted and the prompts drawn; (H, W*T, 3) uint8 RGB."""
    t = min(sample.media.num_frames, max_frames)
    frames = sample.decode_frames(range(t)).astype(np.float32)  # (T, H, W, 3)
    for oid, o in sorted(sample.objects.items()):
        colour = np.array(PALETTE[(oid - 1) % len(PALETTE)], dtype=np.float32)
        for f, rle in o.masks.items():
            if f < t:
                m = masks.decode(rle)
                frames[f][m] = 0.5 * frames[f][m] + 0.5 * colour
    out = frames.clip(0, 255).astype(np.uint8)
    for p in sample.prompts:
        if p.frame >= t:
            continue
        img = np.ascontiguousarray(out[p.frame])
        colour = PALETTE[((p.object_id or 1) - 1) % len(PALETTE)]
        if p.type == "point":
            cv2.circle(img, (int(p.coords[0]), int(p.coords[1])), 3, (255, 255, 255), -1)
            cv2.circle(img, (int(p.coords[0]), int(p.coords[1])), 2, colour, -1)
        elif p.type == "box":
            x1, y1, x2, y2 = (round(c) for c in p.coords)
            cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 255), 1)
        else:
            contours, _ = cv2.findContours(
                masks.decode(p.rle).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(img, contours, -1, (255, 255, 255), 1)
        out[p.frame] = img
    return np.concatenate(list(out), axis=1)  # (T, H, W, 3) -> (H, T*W, 3)


def overlay_path(out: str | Path, key: str) -> Path:
    """`<out>/<key>.png`, always inside `out`: a key that is not a shard-safe name (slashes, dots, an absolute path)
    is made one with `make_key`. The reader already counts a record with such a key as damaged."""
    name = key if is_key(key) else make_key("key", key)
    return Path(out) / f"{name}.png"


def iter_samples(paths: Sequence[str | Path], damage: DamageLog | None = None) -> Iterator[Sample]:
    """Samples of the shards found under `paths`, in order; damaged records are skipped and go to `damage`."""
    yield from iter_checked_samples(find_shards(paths), damage if damage is not None else DamageLog())


def _whole_samples(paths: Sequence[str | Path], damage: DamageLog) -> Iterator[Sample]:
    """The samples of `iter_samples` that also pass `Sample.validate()`, which `describe` and `render_overlay` rely
    on (masks of the frame size, prompts on existing frames); a record that fails it is counted as damaged."""
    for shard in find_shards(paths):
        for ref, record in iter_shard_records(shard, damage):
            try:
                sample = to_sample(record, ref).validate()
            except RecordDamaged as err:
                damage.report(err.damage)
                continue
            except (ValueError, TypeError, RecursionError) as err:  # TypeError: a crafted value of another type
                damage.report(Damage(ref.shard, ref.start, f"record {ref.key!r} fails validation: {err}"))
                continue
            yield sample


def inspect_shards(
    paths: Sequence[str | Path], n: int = 4, out: str | Path | None = None, strict: bool = False
) -> list[Path]:
    """Print the first `n` samples; with `out`, write `<out>/<key>.png` overlays. Returns the PNG paths."""
    if n < 1:
        raise ValueError(f"n: got {n}, expected >= 1 samples to print")
    written: list[Path] = []
    damage = DamageLog(strict)
    for line in incomplete_lines(unfinished_folders(find_shards(paths))):
        print(line)
    report_missing_shards(paths, damage)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(_whole_samples(paths, damage)):
        if i >= n:
            break
        print(describe(sample))
        if out is not None:
            path = overlay_path(out, sample.key)
            path.write_bytes(encode_frame(render_overlay(sample), ext="png"))
            written.append(path)
            print(f"  overlay: {path}")
    if damage.count:
        print(f"damaged records skipped: {damage.count} (see the warnings above)")
    return written


def shard_stats(paths: Sequence[str | Path], strict: bool = False) -> dict:
    """Counts per (source, split), per task, frames and objects, and records lost to damage (frames not decoded) or
    to shards that a manifest lists and that are not there."""
    per_source: Counter = Counter()
    per_task: Counter = Counter()
    frames = objects = n = 0
    nbytes = 0
    damage = DamageLog(strict)
    found = find_shards(paths)
    report_missing_shards(paths, damage)
    for shard in found:
        nbytes += shard.stat().st_size
        for ref, record in iter_shard_records(shard, damage):
            try:
                sample = to_sample(record, ref)  # no frame decoding: JSON, frame files and frame headers checked
            except RecordDamaged as err:
                damage.report(err.damage)
                continue
            per_source[(sample.source, sample.split)] += 1
            per_task[sample.task] += 1
            frames += sample.media.num_frames
            objects += len(sample.objects)
            n += 1
    return {
        "samples": n,
        "bytes": nbytes,
        "per_source": per_source,
        "per_task": per_task,
        "mean_frames": frames / n if n else 0.0,
        "mean_objects": objects / n if n else 0.0,
        "damaged": damage.count,
        "unfinished": unfinished_folders(found),
    }


def print_counts(st: dict) -> None:
    """Print the per-source / split and per-task sample tables of a `shard_stats` result; a source split whose
    build has not finished is marked INCOMPLETE, with a line naming its folder and the command that finishes it."""
    unfinished = st.get("unfinished", {})
    partial = {(folder.parent.name, folder.name) for folder in unfinished}
    print(f"{'source':32s} {'split':10s} {'samples':>9s}")
    for (src, split), c in sorted(st["per_source"].items()):
        mark = "  INCOMPLETE (build not finished)" if (src, split) in partial else ""
        print(f"{src:32s} {split:10s} {c:9d}{mark}")
    for line in incomplete_lines(unfinished):
        print(line)
    print(f"{'task':32s} {'':10s} {'samples':>9s}")
    for task, c in sorted(st["per_task"].items()):
        print(f"{task:32s} {'':10s} {c:9d}")
