"""The model an evaluation scores: a `pixelqa.fit` checkpoint's network with its weights (or the recipe's, untrained).

A checkpoint stores the model config it was trained with (`hyper_parameters.model`). `adopt_trained_model` sets
the recipe's `model.*` to it before anything records or fingerprints the recipe, so that evaluate and the suite
build the model that was trained, as export does (`stored_model_config`); a `model.KEY=...` typed on the command
line still wins, said in a line. The stored values are data from a file, never recipe syntax: a string such as
`${oc.env:SECRET}` is merged escaped (`literal`), so it stays that text and is not resolved into recipe.yaml or
MLflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import torch

from pixelqa.checkpoints import CheckpointError
from pixelqa.config import RecipeError, flatten

# model keys that name files: a value taken from the checkpoint may not exist on this machine
PATH_KEYS: tuple[str, ...] = ("path", "mask_decoder.checkpoint")


def resolve_eval_ckpt(ckpt: str | None, output_dir: str) -> Path | None:
    """The checkpoint to score: None (untrained), `last`, or a path; checked to exist."""
    if ckpt in (None, "", "none", "null"):
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt == "last" else Path(ckpt)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise RecipeError(f"ckpt={ckpt}: no checkpoint at {path}; give a .ckpt written by pixelqa.fit")
    return path


def stored_model_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model config a loaded fit checkpoint was trained with (`hyper_parameters.model`, plain), None if absent."""
    from omegaconf import OmegaConf

    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping) or not isinstance(hp.get("model"), Mapping):
        return None
    return OmegaConf.to_container(OmegaConf.create(dict(hp["model"])))  # type: ignore[return-value]


def read_stored_model_config(path: Path, trust: bool = False) -> dict[str, Any] | None:
    """`stored_model_config` of a checkpoint file, its tensors memory-mapped (not read); refusals as RecipeError."""
    from pixelqa.train.guards import read_resume_metadata
    from pixelqa.train.module import read_checkpoint

    try:
        # seconds even at 7B: the suite reads this before its refused-rerun check, which must stay cheap
        meta = read_resume_metadata(path, trust)
    except Exception:  # noqa: BLE001  (the full reader below says what is wrong in one line, or reads a legacy file)
        try:
            meta = read_checkpoint(path, trust, what="ckpt")
        except CheckpointError as err:
            raise RecipeError(str(err)) from None
    return stored_model_config(meta)


_INTERPOLATION = re.compile(r"(\\*)\$\{")  # `${` and the backslashes right before it


def literal(value: Any) -> Any:
    r"""`value` escaped for OmegaConf so that it reads back as the same plain data, with no interpolation resolved.

    OmegaConf reads `\${` as a literal `${`, and 2n+1 backslashes before `${` as n backslashes and a literal `${`.
    Strings are escaped inside lists and dicts too; other values are returned as they are.
    """
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", value)
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    return value


def _reads_back(value: Any) -> bool:
    """Whether `literal(value)` in a config reads back as `value` exactly (resolved alone, outside any recipe)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        container = OmegaConf.to_container(OmegaConf.create({"v": literal(value)}), resolve=True, throw_on_missing=True)
        return container["v"] == value  # "???" (OmegaConf's missing value) is refused by throw_on_missing
    except (OmegaConfBaseException, ValueError, TypeError):
        return False


def typed_model_keys(args: Sequence[str]) -> list[str]:
    """The model keys (`memory.pooling`) set on the command line; `model=NAME` sets `preset`."""
    keys = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if key == "model":
            keys.append("preset")
        elif key.startswith("model."):
            keys.append(key[len("model.") :])
    return keys


def adopt_trained_model(cfg: Any, args: Sequence[str], ckpt_path: Path | None, trust: bool = False) -> list[str]:
    """Set `cfg.model` to the checkpoint's trained model config, keys typed in `args` kept; returns lines to print."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    if ckpt_path is None:
        return []
    stored = read_stored_model_config(ckpt_path, trust)
    if stored is None:  # an older or foreign checkpoint: nothing to adopt, the recipe's settings stand
        return [f"ckpt={ckpt_path} records no model config (hyper_parameters.model): the recipe's model settings apply"]
    trained = {k: str(v) if isinstance(v, PurePath) else v for k, v in flatten(stored).items()}
    current = flatten(cfg.model)
    typed = typed_model_keys(args)
    taken, kept = [], []
    for key, value in trained.items():
        if key not in current or current[key] == value:
            continue  # a key this version no longer has cannot be set; an equal one changes nothing
        if any(key == t or key.startswith(t + ".") for t in typed):
            kept.append(f"model.{key}: trained {value!r}, evaluating {current[key]!r} (given on the command line)")
            continue
        if key in PATH_KEYS and value is not None and not Path(value).exists():
            raise RecipeError(
                f"model.{key}={value!r} (from ckpt={ckpt_path}) does not exist here; give model.{key}=PATH on the "
                "command line"
            )
        if not _reads_back(value):  # the escaping above is the whole defence: anything it would not keep is refused
            raise RecipeError(f"ckpt={ckpt_path}: its model.{key}={value!r} cannot be taken as plain data")
        try:
            OmegaConf.update(cfg, f"model.{key}", literal(value), merge=False)
        except ValidationError as err:
            raise RecipeError(f"ckpt={ckpt_path}: its model.{key}={value!r} does not fit this version: {err}") from None
        taken.append(f"model.{key} {current[key]!r} -> {value!r}")
    return kept + ([f"model settings from the checkpoint: {'; '.join(taken)}"] if taken else [])


def settle_model_settings(
    cfg: Any, args: Sequence[str], ckpt_path: Path | None, recorded_in: str | None, speak: bool = True
) -> Any:
    """Set `cfg.model` to the model that will be scored (the checkpoint's trained settings, keys typed in `args`
    kept, then what a released folder fixes), saying each change when `speak`; returns the recipe object."""
    import sys

    from pixelqa.config import to_object
    from pixelqa.preflight import apply_release_overrides, check_model_files, release_override_warning

    for line in adopt_trained_model(cfg, args, ckpt_path, to_object(cfg).trust_checkpoint):
        if speak:
            print(line, flush=True)
    recipe = to_object(cfg)
    # a model.X=... that a released folder replaces is otherwise dropped silently, and what is recorded shows it
    overridden = apply_release_overrides(cfg, recipe)
    if overridden:
        recipe = to_object(cfg)
        if speak:
            print(release_override_warning(recipe.model.path, overridden, recorded_in), file=sys.stderr, flush=True)
    check_model_files(recipe.model)  # a missing model folder or SAM file: one line now, before any hashing or loading
    return recipe


def load_model(recipe: Any, ckpt_path: Path | None) -> torch.nn.Module:
    """The UniPixel network of `recipe.model` (see `adopt_trained_model`) with the checkpoint's weights and stage."""
    from omegaconf import OmegaConf

    from pixelqa.train.module import model_from_checkpoint, read_checkpoint

    ckpt = None
    if ckpt_path is not None:
        try:
            ckpt = read_checkpoint(ckpt_path, bool(getattr(recipe, "trust_checkpoint", False)), what="ckpt")
        except CheckpointError as err:
            raise RecipeError(str(err)) from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            keys = [str(k) for k in list(ckpt)[:5]] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise RecipeError(
                f"ckpt={ckpt_path}: holds no 'state_dict' (found {keys}); expected a Lightning checkpoint written by "
                "pixelqa.fit (a released or Qwen2.5-VL folder goes in model.path, a SAM 2.1 file in "
                "model.mask_decoder.checkpoint)"
            )
    # plain data to the model build, which merges it into a config (pixelqa.train.module.model_config): a value that
    # reads `${...}` (a checkpoint's, adopted above as text) stays that text there too
    model_cfg = literal(OmegaConf.to_container(OmegaConf.structured(recipe.model)))
    try:
        return model_from_checkpoint(model_cfg, ckpt, str(ckpt_path), recipe.stage, recipe.seed)
    except ValueError as err:
        prefix = f"init_from={ckpt_path}: "  # load_init_weights' errors: weights that do not fit the model built
        if ckpt is None or not str(err).startswith(prefix):
            raise
        detail = str(err).removeprefix(prefix).partition("; expected")[0]  # its "expected" speaks of fit's stages
        raise RecipeError(
            f"ckpt={ckpt_path}: {detail}; expected a pixelqa.fit checkpoint of this model, built with the model "
            "settings it was trained with (they are read from it: a model.KEY=... given on the command line must keep "
            "the weight shapes)"
        ) from None
