"""Preflight: the file-system checks a run can fail, done before it does any work.

An unwritable output folder used to fail only after training had finished; `check_run` tries every place a fit or
an evaluation will write (output folder, shard root when shards must be built, MLflow store and artifact folder)
and reads the validation shards, and fails with one line naming the recipe key, the path and what was expected
(`RecipeError`: the CLIs exit with status 2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pixelqa.config import RecipeError


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the folder a run would create `path` in)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, key: str) -> None:
    """`path` (a folder, created later if missing) can be written: a probe file is created and removed there."""
    where = _nearest_existing(Path(path))
    if not where.is_dir():
        raise RecipeError(f"{key}={path}: {where} is not a folder; expected a writable folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pixelqa-preflight-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RecipeError(
            f"{key}={path}: cannot write in {where} ({err.strerror}); expected a writable folder"
        ) from None


def check_tracking(tracking: Any) -> None:
    """The tracking URI names a store MLflow supports; the SQLite file, its folder and the artifact folder can be
    written."""
    if not getattr(tracking, "enabled", True):
        return
    from pixelqa.tracking import resolve_uris, tracking_uri_problem

    uri, artifacts = resolve_uris(tracking)
    problem = tracking_uri_problem(uri)
    if problem is not None:  # MLflow would fail only when the run's logger opens the store, after the work
        raise RecipeError(f"tracking.tracking_uri={tracking.tracking_uri!r}: {problem}")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        check_writable(db.parent, "tracking.tracking_uri")
        if db.exists():
            try:
                with open(db, "ab"):
                    pass
            except OSError as err:
                raise RecipeError(
                    f"tracking.tracking_uri={tracking.tracking_uri}: cannot write {db} ({err.strerror}); "
                    "expected a writable SQLite file"
                ) from None
    parsed = urlparse(artifacts)
    if parsed.scheme == "file":
        check_writable(Path(unquote(parsed.path)), "tracking.artifact_location")


def check_shards(data: Any) -> None:
    """Validation shards can be opened; with data.strict, no shard holds damage found on opening (e.g. truncation)."""
    from pixelqa.data.layout import shard_dir
    from pixelqa.data.shard_reader import open_shard
    from pixelqa.train.datamodule import SYNTHETIC, check_finished

    strict = bool(getattr(data, "strict", False))
    groups = [("val_sources", data.val_sources)] + ([("sources", data.sources)] if strict else [])
    for group, sources in groups:
        for i, src in enumerate(sources):
            tars = sorted(shard_dir(data.shards, src.name, src.split).glob("*.tar"))
            # an evaluation scores what a stopped build left as if it were the whole split otherwise; a synthetic
            # split built on first use is resumed by that build instead
            if tars and not (src.name == SYNTHETIC and data.build_if_missing):
                check_finished(data, group, i)
            for tar in tars:
                try:
                    contents = open_shard(tar)
                except OSError as err:
                    raise RecipeError(
                        f"data.{group}[{i}] ({src.name}/{src.split}): cannot read {tar} ({err.strerror})"
                    ) from None
                if strict and contents.damage:
                    raise RecipeError(f"data.strict=true and data.{group}[{i}] is damaged: {contents.damage[0]}")


def check_launcher(recipe: Any) -> None:
    """A fit or an evaluation runs in this process: a launcher (`launcher=slurm`, `launcher.KEY=...`) is refused, not
    ignored (a cluster run trained on the login node otherwise)."""
    from dataclasses import fields

    from pixelqa.launch.settings import LauncherConfig

    launcher, default = recipe.launcher, LauncherConfig()
    if launcher.executor != default.executor:
        given = f"launcher={launcher.executor}"
    else:
        changed = [f.name for f in fields(LauncherConfig) if getattr(launcher, f.name) != getattr(default, f.name)]
        if not changed:
            return
        given = f"launcher.{changed[0]}={getattr(launcher, changed[0])}"
    raise RecipeError(
        f"{given}: pixelqa.fit and pixelqa.evaluate run in this process and submit no jobs (launchers are for "
        "pixelqa.grid and pixelqa.data build|mixture); to run one fit as a job, submit a one-cell grid, e.g. "
        "`python -m pixelqa.grid GRID.yaml launcher=slurm ...` with `grid: {seed: [0]}` (see docs/cluster.md), "
        "or drop the launcher arguments to run here"
    )


def sam_init_warning(recipe: Any) -> str | None:
    """A warning when a real model's SAM 2.1 starts from random weights (a base Qwen folder, no SAM checkpoint, nothing
    to initialise or resume from); None otherwise. Not an error: a random SAM may be wanted for an ablation."""
    m = recipe.model
    if m.preset == "tiny" or not m.path or m.mask_decoder.checkpoint or recipe.init_from:
        return None
    if recipe.ckpt not in (None, "", "none", "null"):
        return None  # a resume restores the run's own weights
    from pixelqa.model import release

    try:
        folder = release.inspect_folder(m.preset, m.path)
    except release.ReleaseError:
        return None  # the model check reports it
    if folder is None or folder.kind != "base":
        return None  # a released UniPixel carries its SAM weights
    return (
        f"warning: model.mask_decoder.checkpoint is not set and model.path={m.path} is a Qwen2.5-VL base: the "
        f"{m.mask_decoder.arch} SAM 2.1 mask decoder (and the <|ref|> prompt encoder copied from it) start from "
        "random weights, where the release starts from SAM 2.1's; set model.mask_decoder.checkpoint=<local SAM 2.1 "
        f"{m.mask_decoder.arch} .pt> (leave it unset only for a random-SAM ablation)"
    )


def apply_release_overrides(cfg: Any, recipe: Any) -> list[str]:
    """A released `model.path` fixes some model settings (`release.apply_release_config`): set them on `cfg`, so
    that what the run records (recipe.yaml, the MLflow params) shows the values used; returns `model.KEY: yours ->
    released` each."""
    from omegaconf import OmegaConf

    from pixelqa.model import release

    try:
        folder = release.inspect_folder(recipe.model.preset, recipe.model.path)
        if folder is None or folder.kind != "release":
            return []
        changes = release.release_overrides(recipe.model, folder)
    except release.ReleaseError:
        return []  # an unreadable folder or config: fit's model check, or evaluate's model loading, reports it
    for key, (_, used) in changes.items():
        OmegaConf.update(cfg, f"model.{key}", used, merge=False)
    return [f"model.{key}: {yours!r} -> {used!r}" for key, (yours, used) in changes.items()]


def release_override_warning(model_path: str, overridden: list[str], recorded_in: str | None) -> str:
    """The one warning line that names the settings a released `model.path` fixed, and where the values used are
    recorded (`recorded_in`; None: nowhere)."""
    recorded = f" (recorded as used in {recorded_in})" if recorded_in else ""
    return (
        f"warning: model.path={model_path} is a released UniPixel, which fixes these settings{recorded}: "
        f"{'; '.join(overridden)}"
    )


def check_run(recipe: Any, launcher: bool = True) -> None:
    """All preflight checks of a fit or an evaluation run of `recipe` (`launcher=False`: the caller has run
    `check_launcher` already)."""
    if launcher:
        check_launcher(recipe)
    check_writable(recipe.output_dir, "output_dir")
    from pixelqa.data.layout import shard_dir
    from pixelqa.train.datamodule import SYNTHETIC

    data = recipe.data
    to_build = [
        s
        for s in list(data.sources) + list(data.val_sources)
        if s.name == SYNTHETIC and not any(shard_dir(data.shards, s.name, s.split).glob("*.tar"))
    ]
    if data.build_if_missing and to_build:  # shards are built on first use: their folder must be writable
        check_writable(data.shards, "data.shards")
    check_shards(data)
    check_tracking(recipe.tracking)
