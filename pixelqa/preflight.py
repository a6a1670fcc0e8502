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


def _exists(path: Path) -> bool:
    """Whether `path` exists; a path the OS cannot even look up (a name over its length limit) does not."""
    try:
        return path.exists()
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the folder a run would create `path` in)."""
    p = path.absolute()
    while not _exists(p) and p != p.parent:
        p = p.parent
    return p


def _long_name(path: Path, where: Path) -> str | None:
    """Why a folder or file of `path` still to be created under `where` cannot be (a name over the file system's
    length limit), or None."""
    name_max = _name_max(where)
    for part in path.absolute().parts[len(where.parts) :]:
        size = len(os.fsencode(part))
        if size > name_max:
            return f"the name {_short(part, 40)!r} is {size} bytes, over the file system's {name_max}"
    return None


def check_writable(path: str | Path, key: str) -> None:
    """`path` (a folder, created later if missing) can be written: a probe file is created and removed there."""
    where = _nearest_existing(Path(path))
    too_long = _long_name(Path(path), where)
    if too_long is not None:
        raise RecipeError(f"{key}={_short(str(path))}: cannot create it ({too_long}); choose a shorter name")
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


SQLITE_MAX_PATH = 512  # bytes: SQLite's default SQLITE_MAX_PATHNAME, the longest path its unix VFS opens
# files SQLite and the store lock (`pixelqa.tracking`) keep beside the database; `-journal` is the longest suffix
SQLITE_SIBLINGS = ("-journal", "-wal", "-shm", ".lock")


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _short(text: str, keep: int = 100) -> str:
    """`text`, its middle cut to `...` past `keep` characters (a path of hundreds of bytes in a one-line error)."""
    return text if len(text) <= keep else f"{text[: keep // 3]}...{text[-(keep - keep // 3) :]}"


def sqlite_path_problem(db: Path) -> str | None:
    """Why SQLite (or the store lock beside it) cannot open a database at `db`, as far as its length says: SQLite
    refuses a path over its 512 bytes (the `-journal` it writes beside the database included) only after MLflow's
    minutes of retries, and a name whose `.lock` or `-journal` exceeds the file system's limit fails as deep; None
    when the length is fine."""
    full = Path(os.path.realpath(db))  # SQLite opens the path with symlinks followed
    where = _nearest_existing(full)
    too_long = _long_name(full.parent, where) if where != full else None
    if too_long is not None:
        return too_long
    name_max = _name_max(where)
    suffix = max(SQLITE_SIBLINGS, key=len)
    name = len(os.fsencode(full.name))
    if name + len(suffix) > name_max:
        return (
            f"its file name is {name} bytes; the {suffix} file SQLite writes beside it must fit in the file system's "
            f"{name_max}, so the name may have at most {name_max - len(suffix)} bytes"
        )
    size = len(os.fsencode(str(full)))
    if size + len(suffix) > SQLITE_MAX_PATH:
        return (
            f"the path is {size} bytes; SQLite opens paths of at most {SQLITE_MAX_PATH} bytes, its {suffix} file's "
            f"included, so the database path may have at most {SQLITE_MAX_PATH - len(suffix)} bytes"
        )
    return None


def check_tracking(tracking: Any) -> None:
    """The tracking URI names a store MLflow supports; the SQLite file, its folder and the artifact folder can be
    written, and the SQLite path is short enough for SQLite (`sqlite_path_problem`)."""
    if not getattr(tracking, "enabled", True):
        return
    from pixelqa.tracking import resolve_uris, tracking_uri_problem

    uri, artifacts = resolve_uris(tracking)
    problem = tracking_uri_problem(uri)
    if problem is not None:  # MLflow would fail only when the run's logger opens the store, after the work
        raise RecipeError(f"tracking.tracking_uri={tracking.tracking_uri!r}: {problem}")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        too_long = sqlite_path_problem(db)
        if too_long is not None:
            raise RecipeError(
                f"tracking.tracking_uri={_short(str(tracking.tracking_uri))}: SQLite cannot open {_short(str(db))} "
                f"({too_long}); choose a shorter path"
            )
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


def runs_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` (a recipe's trainer.accelerator) runs on this machine's CPU: `cpu`, or
    `auto` where no CUDA or MPS device is available."""
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def check_precision(trainer: Any) -> None:
    """trainer.precision=16-mixed needs a GPU: on a CPU Lightning runs bf16-mixed instead, with a warning only, while
    the recipe (recipe.yaml, MLflow, checkpoints) would record 16-mixed."""
    accelerator = str(trainer.accelerator)
    if str(trainer.precision) == "16-mixed" and runs_on_cpu(accelerator):
        found = " (no GPU found)" if accelerator == "auto" else ""
        raise RecipeError(
            f"trainer.precision=16-mixed with trainer.accelerator={accelerator}{found}: float16 autocast needs a "
            "GPU, and on a CPU Lightning would run bf16-mixed instead; use trainer.precision=bf16-mixed (or 32-true)"
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


def check_model_files(model: Any) -> Any:
    """The local files `model` (a recipe's model section) loads exist, before any work: a real preset, or the tiny one
    given a path, needs a Qwen2.5-VL (or released UniPixel) folder with config.json, and a SAM checkpoint given must
    be a file (nothing is downloaded). Returns `release.inspect_folder`'s description of the folder, or None."""
    if model.preset == "tiny" and not model.path:
        ckpt = model.mask_decoder.checkpoint
        if ckpt and not Path(ckpt).is_file():
            raise RecipeError(f"model.mask_decoder.checkpoint={ckpt!r}: no such file; give a local SAM 2.1 .pt file")
        return None
    if not model.path or not Path(model.path).is_dir() or not (Path(model.path) / "config.json").is_file():
        raise RecipeError(
            f"model.path={model.path!r}: model={model.preset} needs a local Qwen2.5-VL directory with config.json; "
            f"set model.path=/local/Qwen2.5-VL-... (nothing is downloaded)"
        )
    ckpt = model.mask_decoder.checkpoint
    if ckpt and not Path(ckpt).is_file():
        raise RecipeError(f"model.mask_decoder.checkpoint={ckpt!r}: no such file; give a local SAM 2.1 .pt file")
    from pixelqa.model import release

    try:
        return release.inspect_folder(model.preset, model.path)
    except release.ReleaseError as err:
        raise RecipeError(str(err)) from None


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
