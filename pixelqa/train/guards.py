"""What a checkpoint records about the run that made it, and the checks a resume makes against it.

- The data-stream fingerprint: mixture (sources, splits, repeats), seed, global batch, world size, the settings
  that decide which sample lands in which slot, and each training source's shards (`manifest/<source>/<split>`:
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


def source_manifests(data: Any) -> dict[str, str | None]:
    """`manifest/<source>/<split>` -> `shards_identity` of each training source (None: not built yet)."""
    from pixelqa.data.shards import shard_dir  # the data layer's layout: the data module imports this module

    return {
        MANIFEST_KEY.format(source=s.name, split=s.split): shards_identity(shard_dir(data.shards, s.name, s.split))
        for s in data.sources
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


def read_resume_metadata(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The PixelQA entries, step and hyperparameters of a checkpoint (file, or DeepSpeed directory), its tensors
    memory-mapped (not read);
    loaded without running code from it unless `trust` (`pixelqa.checkpoints`)."""
    import torch

    from pixelqa.checkpoints import ALLOWED_GLOBALS, CheckpointError

    path = Path(path)
    if path.is_dir():  # a DeepSpeed checkpoint directory: Lightning keeps its own entries in the client state
        files = sorted(path.glob("checkpoint/mp_rank_*_model_states.pt")) + sorted(path.glob("*model_states.pt"))
        if not files:
            raise FileNotFoundError(f"ckpt={path}: a directory without DeepSpeed model states (checkpoint/*.pt)")
        path = files[0]
    if trust:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    else:
        try:
            with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001  (any refusal or damage: one clear message)
            raise CheckpointError(
                f"ckpt: {str(path)!r} cannot be read without unpickling code ({exc}); set trust_checkpoint=true "
                "only for a file you trust"
            ) from None
    return {k: v for k, v in ckpt.items() if k.startswith("pixelqa_") or k in ("global_step", "hyper_parameters")}
