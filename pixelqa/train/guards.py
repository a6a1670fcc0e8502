"""What a checkpoint records about the run that made it, and the checks a resume makes against it.

- The data-stream fingerprint: mixture (sources, splits, repeats), seed, global batch, world size, the settings
  that decide which sample lands in which slot and what it holds there (prompt mode, memory prompts, sequence cap,
  pixel budgets), and each training source's shards (`manifest/<source>/<split>`:
  their sample count and a SHA-256 of the shard checksums the manifests list; the source sizes set the draw
  probabilities and the per-epoch permutations). A resume skips `global_step x accumulate` batches of a stream it
  assumes unchanged; with another fingerprint it would silently train on another stream, so it is refused unless
  `--allow-stream-change` is given. An entry the checkpoint does not hold (written by an earlier version, or a
  synthetic source not built yet when the fingerprint was taken) is not compared, and a note says so.
- The base model's reference (preset, local path, a hash of its config.json): checkpoints hold only the trained
  weights, the frozen base is rebuilt from this reference.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST_KEY = "manifest/{source}/{split}"  # a training source's shards in the fingerprint (an MLflow-valid name)


def shards_identity(folder: str | Path) -> str | None:
    """`<n> samples, shards sha256:<16 hex>` of a shard folder's manifests (the SHA-256 covers every shard's name,
    sample count and checksum); None when the folder has no manifest (not built yet)."""
    import json

    manifests = sorted(Path(folder).glob("manifest*.json"))
    if not manifests:
        return None
    shards: list[list[Any]] = []
    for path in manifests:
        try:
            shards += [[s["name"], int(s["samples"]), s["sha256"]] for s in json.loads(path.read_text())["shards"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: unknown, as a missing manifest (reading the shards names the file)
    # the shards' own checksums, not the manifest's bytes: rebuilding from raw files moved elsewhere changes the
    # manifest (its raw-file paths) but not one sample of the stream
    digest = hashlib.sha256(repr(sorted(shards)).encode()).hexdigest()[:16]
    return f"{sum(n for _, n, _ in shards)} samples, shards sha256:{digest}"


def source_manifests(data: Any, sources: Any = None) -> dict[str, str | None]:
    """`manifest/<source>/<split>` -> `shards_identity` of each training source, or of `sources` (e.g.
    `data.val_sources`: MLflow params `val_stream/manifest/...`); None: not built yet."""
    from pixelqa.data.shards import shard_dir  # the data layer's layout: the data module imports this module

    return {
        MANIFEST_KEY.format(source=s.name, split=s.split): shards_identity(shard_dir(data.shards, s.name, s.split))
        for s in (data.sources if sources is None else sources)
    }


def fill_unknown(fingerprint: dict[str, Any], data: Any) -> list[str]:
    """Set the manifest entries of `fingerprint` that were unknown (None: a synthetic source built on first use,
    after the fingerprint was taken) from the shards now there; returns the keys set."""
    filled = []
    for key, value in source_manifests(data).items():
        if fingerprint.get(key, value) is None and value is not None:
            fingerprint[key] = value
            filled.append(key)
    return filled


def stream_fingerprint(recipe: Any, world: int, accumulate: int) -> dict[str, Any]:
    """The settings and the shards that fix the training stream, slot by slot (a plain, JSON-able dict)."""
    d = recipe.data
    return {
        "sources": [f"{s.name}/{s.split}x{float(s.repeat):g}" for s in d.sources],
        "seed": int(recipe.seed),
        "global_batch": int(d.batch_size) * int(world) * int(accumulate),
        "world_size": int(world),
        "batch_size": int(d.batch_size),
        "num_frames": int(d.num_frames),
        "group_by_type": bool(getattr(d, "group_by_type", False)),
        "max_redraws": int(getattr(d, "max_redraws", 10)),
        # what the sample in a slot becomes: its prompts, memory prompts, media budgets and sequence cap (a sample
        # over max_tokens is cut or redrawn, which moves every later draw of its source)
        "prompt_mode": str(d.prompt_mode),
        "memory_prompts": str(d.memory_prompts),
        "max_tokens": int(d.max_tokens),
        "min_pixels": int(d.min_pixels),
        "max_pixels": int(d.max_pixels),
        "image_min_pixels": int(d.image_min_pixels),
        "image_max_pixels": int(d.image_max_pixels),
        **source_manifests(d),
    }


def unrecorded(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The entries of `now` that `saved` does not hold (written by an earlier version) or either side holds as None
    (shards not built when that fingerprint was taken): unknown, so not compared."""
    return sorted(k for k in now if k not in saved or (saved[k] is None) != (now[k] is None))


def stream_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`key: saved -> now` for each fingerprint entry that differs ([] when equal or the checkpoint has none); an
    entry only `now` knows is not a change (see `unrecorded`), and a note naming it is printed."""
    if not saved:
        return []
    unknown = unrecorded(saved, now)
    if unknown:
        # said here, where every resume check passes (pixelqa.fit), so that an unchecked entry is never silent
        print(
            f"note: not compared with the checkpoint's data-stream fingerprint: {', '.join(unknown)} (not recorded "
            "by the version that wrote it, or the shards were not built yet)"
        )
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in unknown and saved.get(k) != now.get(k)
    ]


def base_reference(model: Any) -> dict[str, Any]:
    """The frozen base model a checkpoint's weights belong to: preset, path and sha256 of its config.json."""
    ref: dict[str, Any] = {"preset": str(model.preset), "path": str(model.path) if model.path else None}
    config = Path(str(model.path)) / "config.json" if model.path else None
    if config is not None and config.is_file():
        ref["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    return ref


# What a genuine DeepSpeed checkpoint's optimizer-state files name besides tensors and plain data (ZeRO-1/2/3 with
# bf16 or fp32, and fp16's dynamic loss scaler): plain-data classes whose construction runs no code of the file.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)
DEEPSPEED_LATEST = ("latest", "latest_universal")  # the files DeepSpeed reads its checkpoint tag (a folder) from


def _deepspeed_allowed() -> list[Any]:
    """The safe-load allow-list of a DeepSpeed checkpoint folder: DEEPSPEED_GLOBALS (those that import) and, under
    the name `builtins.getattr` (how Python pickles an enum member, `ZeroStageEnum.gradients`), a getattr that only
    reads a member of one of those enums."""
    import enum
    import importlib
    import pickle

    classes = []
    for name in DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # no DeepSpeed (or another version): files naming them are refused
            continue
    enums = tuple(c for c in classes if isinstance(c, type) and issubclass(c, enum.Enum))

    def enum_member(cls: Any, name: str) -> Any:
        if cls in enums and isinstance(name, str) and name in cls.__members__:
            return cls[name]
        raise pickle.UnpicklingError(f"getattr({cls!r}, {name!r}) is not a member of an allowed enum")

    return [*classes, (enum_member, "builtins.getattr")]


def _safe_metadata_load(path: Path, extra: list[Any] | None = None) -> Any:
    """torch.load of `path` with weights_only=True, ALLOWED_GLOBALS (+ `extra`) and its tensors memory-mapped; a
    refusal or a damaged file is one CheckpointError line naming the file (and the globals it needs)."""
    import torch

    from pixelqa.checkpoints import ALLOWED_GLOBALS, CheckpointError, unsafe_globals

    try:
        with torch.serialization.safe_globals([*ALLOWED_GLOBALS, *(extra or [])]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001  (any refusal or damage: one clear message)
        allowed = {f"{t.__module__}.{t.__qualname__}" for t in (extra or []) if isinstance(t, type)}
        names = [n for n in unsafe_globals(path) if n not in allowed and n != "builtins.getattr"]
        if names or "unsupported global" in str(exc).lower() or "unpickl" in type(exc).__name__.lower():
            needs = ", ".join(names[:5]) if names else "objects outside tensors and plain data"
            raise CheckpointError(
                f"ckpt: {str(path)!r} needs unpickling of {needs}, which could run code; refused. Set "
                "trust_checkpoint=true only for a file you trust"
            ) from None
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"ckpt: {str(path)!r} cannot be read as a checkpoint ({said}); refused") from None


def deepspeed_files(folder: str | Path, trust: bool = False) -> tuple[Path, list[Path]]:
    """(the model-states file holding Lightning's entries, every `*.pt` a resume may unpickle) of a DeepSpeed
    checkpoint folder. DeepSpeed reads the tag folder from `latest` and loads every rank's model and optimizer
    states there; unless `trust`, the tag must name a folder inside `folder` (DeepSpeed would follow `../x` or `/x`
    anywhere)."""
    from pixelqa.checkpoints import CheckpointError

    folder = Path(folder)
    root = Path(os.path.realpath(folder))
    tags = []
    for name in DEEPSPEED_LATEST:
        latest = folder / name
        if latest.is_file():
            tag = latest.read_text(errors="replace").strip()
            tag_dir = Path(os.path.realpath(folder / tag))
            if not trust and root not in tag_dir.parents:
                raise CheckpointError(
                    f"ckpt: {str(latest)!r} names the tag folder {tag!r}, which is not a folder inside "
                    f"{str(folder)!r}; refused. Set trust_checkpoint=true only for a checkpoint you trust"
                )
            tags.append(tag_dir)
    tags = tags or [Path(os.path.realpath(folder / "checkpoint"))]  # Lightning's tag
    # named as they are on disk (links followed): the tag folder's files, which DeepSpeed loads, and any other
    files = {Path(os.path.realpath(p)) for tag_dir in tags for p in tag_dir.glob("*.pt")}
    files |= {Path(os.path.realpath(p)) for p in folder.rglob("*.pt") if p.is_file()}
    states = [p for tag_dir in tags for p in sorted(tag_dir.glob("mp_rank_*_model_states.pt"))]
    states += [p for tag_dir in tags for p in sorted(tag_dir.glob("*model_states.pt"))]
    if not states:
        raise FileNotFoundError(f"ckpt={folder}: a directory without DeepSpeed model states (checkpoint/*.pt)")
    return Path(os.path.realpath(states[0])), sorted(files)


def read_resume_metadata(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The PixelQA entries, step and hyperparameters of a checkpoint (file, or DeepSpeed directory), its tensors
    memory-mapped (not read); loaded without running code from it unless `trust` (`pixelqa.checkpoints`).

    A DeepSpeed directory is resumed by DeepSpeed's own loader, which unpickles every model- and optimizer-state
    file of its tag folder in full; so every `*.pt` in the directory is safe-loaded here first, and one that needs
    more than tensors, plain data and DeepSpeed's own plain classes refuses the resume (one line naming the file).

    Inside `metadata_cache()` (one fit start, whose checks read the same checkpoint before the model is built and
    after) each checkpoint is read once while its files keep their size and mtime; each caller gets its own copy."""
    import copy

    if _METADATA is None:
        return _read_resume_metadata(Path(path), trust)
    key = (os.path.realpath(path), bool(trust), _files_stamp(Path(path)))
    if key not in _METADATA:
        _METADATA[key] = _read_resume_metadata(Path(path), trust)
    return copy.deepcopy(_METADATA[key])


_METADATA: dict[tuple, dict[str, Any]] | None = None  # None: no cache (outside `metadata_cache`)


@contextmanager
def metadata_cache() -> Iterator[None]:
    """Keep what `read_resume_metadata` reads until the block ends (a start: file stamps can repeat within a clock
    tick, so a cache that outlived it could miss a checkpoint rewritten at the same size a few ms later)."""
    global _METADATA
    outer, _METADATA = _METADATA, {} if _METADATA is None else _METADATA
    try:
        yield
    finally:
        _METADATA = outer


def _files_stamp(path: Path) -> tuple:
    """(name, size, mtime_ns) of a checkpoint file or of every file in a checkpoint directory; () when absent."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])


def _read_resume_metadata(path: Path, trust: bool) -> dict[str, Any]:
    """`read_resume_metadata` without its cache."""
    import torch

    if path.is_dir():  # a DeepSpeed checkpoint directory: Lightning keeps its own entries in the client state
        path, every = deepspeed_files(path, trust)
        if not trust:
            allowed = _deepspeed_allowed()
            for file in every:  # the optimizer states too: DeepSpeed's loader unpickles them with weights_only=False
                if file != path:
                    _safe_metadata_load(file, allowed)
            return _entries(_safe_metadata_load(path, allowed))
    if trust:
        return _entries(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
    return _entries(_safe_metadata_load(path))


def _entries(ckpt: Any) -> dict[str, Any]:
    """The entries of a loaded checkpoint a resume checks."""
    if not isinstance(ckpt, dict):
        from pixelqa.checkpoints import CheckpointError

        raise CheckpointError(f"ckpt: holds a {type(ckpt).__name__}, expected a checkpoint (a dict)")
    return {k: v for k, v in ckpt.items() if k.startswith("pixelqa_") or k in ("global_step", "hyper_parameters")}
