"""What a checkpoint records about the run that made it, and the checks a resume makes against it.

- The data-stream fingerprint: mixture (sources, splits, repeats), seed, global batch, world size and the settings
  that decide which sample lands in which slot. A resume skips `global_step x accumulate` batches of a stream it
  assumes unchanged; with another fingerprint it would silently train on another stream, so it is refused unless
  `--allow-stream-change` is given.
- The base model's reference (preset, local path, a hash of its config.json): checkpoints hold only the trained
  weights, the frozen base is rebuilt from this reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def stream_fingerprint(recipe: Any, world: int, accumulate: int) -> dict[str, Any]:
    """The settings that fix the training stream, slot by slot (a plain, JSON-able dict)."""
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
    }


def stream_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`key: saved -> now` for each fingerprint entry that differs ([] when equal or the checkpoint has none)."""
    if not saved:
        return []
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
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
