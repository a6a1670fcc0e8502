"""Train one stage: `python -m pixelqa.fit recipe=stage3 [group=preset] [a.b=value ...]`.

Without presets on the command line a stage recipe runs the embedded demo (tiny random-init model, synthetic
shards built on first use, 2 CPU cores, a few minutes). Each recipe's header shows its paper setting.

    python -m pixelqa.fit recipe=stage1                           # demo, stage 1
    python -m pixelqa.fit recipe=stage2 init_from=runs/stage1     # stage 2 from stage 1's last checkpoint
    python -m pixelqa.fit recipe=stage3 ckpt=last                 # resume runs/stage3 (same MLflow run)
    python -m pixelqa.fit recipe=stage3 --print-config            # print the resolved recipe and exit
    python -m pixelqa.fit recipe=stage3 ckpt=last --allow-stream-change   # resume on a changed data stream

Checkpoints are written during training (`trainer.checkpoint_every_n_steps`, by default a fifth of the run; at
`scale=paper` every 500 optimizer steps in stages 1-2 and 1,000 in stage 3), the last `trainer.keep_checkpoints`
kept, and at the end; `last.ckpt` links to the newest (one file per save). Each records the data-stream fingerprint,
and a resume on another stream is refused unless `--allow-stream-change` is given; and the resolved recipe, so that
a resume names every other setting it changes (MLflow tag `pixelqa.resumed_with`) and writes its recipe as
`recipe.resumed-stepNNNNNN.yaml` beside the first start's `recipe.yaml`. Ctrl-C prints the command that resumes.
At the end the run prints its final metrics (one `name: value` per line after `==== PixelQA fit summary ====`),
then where the checkpoint, the overlays and the MLflow store are, with the `mlflow ui` command that shows them.
Grid runners call `run(args, parent_run_id=...)`: the run becomes an MLflow child of that parent.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from pixelqa.config import Recipe, RecipeError, flatten, load_recipe, print_config, run_cli, to_object

if TYPE_CHECKING:
    import lightning as L  # imported when a run starts: `--help` and recipe errors stay fast

DEMO_PRESETS = {"model": "tiny", "data": "synthetic"}
PRINT_CONFIG = "--print-config"
ALLOW_STREAM_CHANGE = "--allow-stream-change"
FIT_LOCK_ADVICE = (
    "wait for it to finish, or give this run another output_dir= (ckpt=last continues a run once its process has ended)"
)
QUIET_RANK_EXIT_DELAY_S = 3.0  # a rank that leaves an error to rank 0's report exits this much later
RESUMED_WITH_TAG = "pixelqa.resumed_with"  # what each resume changed: `at step N: key: old -> new; ...`, ' | ' apart
RESUMED_AT_TAG = "pixelqa.resumed_at_step"  # the step each resume continued from, comma-separated

# Recipe keys a resume does not compare with its checkpoint's recipe: none can change a number the run computes
# (weights, losses, validation scores); a key ending in "." covers its group. Every other key that differs is
# named in the "resuming with changed settings" line and the pixelqa.resumed_with tag.
RESUME_UNCOMPARED = (
    "output_dir",  # where the run writes (ckpt=PATH may continue another folder's checkpoint)
    "ckpt",  # how this start resumes, and what it accepts
    "trust_checkpoint",
    "trainer.allow_stream_change",
    "init_from",  # a resume loads its checkpoint's weights, not init_from's
    "presets.",  # preset names: the values they set are compared key by key
    "launcher.",  # where and how the process was started
    "tracking.",  # where results are logged (tracking.num_overlays is compared as the module's num_overlays)
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",  # which steps are logged, not their values
    "trainer.checkpoint_every_n_steps",  # when the state is saved: a resume equals the uninterrupted run
    "trainer.keep_checkpoints",
    "trainer.max_steps",  # compared as the module's total_steps (the learning-rate schedule follows it)
    "data.num_workers",  # the same batches in the same order
    "data.shuffle_buffer",  # read by make_dataset (users' own loops), not by fit's stream
    "data.raw_root",  # read by `data build`, not by fit
    "data.build_if_missing",  # builds missing shards only; the shards' identities are compared
    "data.strict",  # a damaged record stops the run instead of being skipped: no run finishes with other numbers
    "eval.before_fit",  # a resume does not score the untrained model
)


def world_size(trainer_cfg: Any) -> int:
    """Number of processes a trainer config asks for (devices x nodes); -1 / "auto" count visible GPUs."""
    devices = trainer_cfg.devices
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif devices in (-1, "-1", "auto"):
        gpu = trainer_cfg.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        n = torch.cuda.device_count() if gpu else 1
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            raise RecipeError(f"trainer.devices={devices!r}: expected an int, -1, 'auto' or a list of ids") from None
    return max(1, n) * max(1, int(trainer_cfg.num_nodes))


def accumulation(recipe: Recipe) -> int:
    """Micro-batches per optimizer step: data.global_batch_size / (batch_size x processes), else the trainer's; a
    trainer.accumulate_grad_batches other than 1 (its default) that disagrees with the global batch is refused."""
    gbs = recipe.data.global_batch_size
    asked = int(recipe.trainer.accumulate_grad_batches)
    if gbs is None:
        return asked
    processes = world_size(recipe.trainer)
    per_step = recipe.data.batch_size * processes
    if gbs % per_step:
        raise RecipeError(
            f"data.global_batch_size={gbs} is not a multiple of data.batch_size x processes = "
            f"{recipe.data.batch_size} x {processes}; choose a global batch size divisible by {per_step}"
        )
    if asked not in (1, gbs // per_step):  # the stage recipes set global_batch_size at scale=paper
        raise RecipeError(
            f"trainer.accumulate_grad_batches={asked} disagrees with data.global_batch_size={gbs}, which wins: it "
            f"accumulates {gbs // per_step} (= {gbs} / (data.batch_size {recipe.data.batch_size} x {processes} "
            f"processes)); drop trainer.accumulate_grad_batches, or set data.global_batch_size=null to accumulate "
            f"{asked}"
        )
    return gbs // per_step


def record_accumulation(cfg: Any, recipe: Recipe) -> Recipe:
    """Set the accumulation the run uses (`accumulation`) as `trainer.accumulate_grad_batches` of `cfg`, so that
    recipe.yaml, the MLflow params and the checkpoints' recipe show it; returns the recipe of the updated `cfg`."""
    used = accumulation(recipe)
    if used == recipe.trainer.accumulate_grad_batches:
        return recipe
    cfg.trainer.accumulate_grad_batches = used
    return to_object(cfg)


def resolve_ckpt(recipe: Recipe) -> Path | None:
    """The checkpoint to resume (`ckpt=last` -> <output_dir>/checkpoints/last.ckpt), checked to exist (a DeepSpeed
    folder a kill left aside while it was being replaced is put back first: `recover_checkpoint_folder`)."""
    if recipe.ckpt in (None, "", "none", "null"):
        return None
    path = Path(recipe.output_dir) / "checkpoints" / "last.ckpt" if recipe.ckpt == "last" else Path(recipe.ckpt)
    recover_checkpoint_folder(path)
    if not (path.is_file() or (path.is_dir() and (path / "checkpoint").is_dir())):  # a file, or DeepSpeed's folder
        raise RecipeError(
            f"ckpt={recipe.ckpt}: no checkpoint at {path}; train without ckpt= first, or give a .ckpt path "
            "(or a DeepSpeed checkpoint directory)"
        )
    return path


def recover_checkpoint_folder(path: Path) -> Path | None:
    """Put back the DeepSpeed checkpoint folder that `path` (or the link `path`, e.g. last.ckpt) names when a kill
    between `pixelqa.files.install_folder`'s two renames left it only as `.NAME.old`; returns it, or None."""
    from pixelqa.files import recover_folder

    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        return recover_folder(target)
    except FileNotFoundError:  # another process of this run (a DDP rank) put it back first
        return None


def settings_changes(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for each hyperparameter of a checkpoint's run that this run would set otherwise (keys only
    one side has, e.g. added by a newer version, are not changes)."""
    if not saved:
        return []
    old, new = flatten(dict(saved)), flatten(dict(now))
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys()) if str(old[k]) != str(new[k])]


def _uncompared(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_UNCOMPARED)


def _in_list(key: str) -> bool:
    """Whether a flattened key is inside a list entry (`data.val_sources.1.name`), not a field of the schema."""
    return any(part.isdigit() for part in key.split("."))


def recipe_changes(saved: Mapping[str, Any], now: Mapping[str, Any], covered: Any = ()) -> list[str]:
    """`key: old -> new` for each key of the flattened recipe (`pixelqa.config.flatten`) that differs from the
    checkpoint's, less RESUME_UNCOMPARED and `covered` (keys `settings_changes` compares). A key only one side has
    is a change inside a list (e.g. a validation source added, `absent` on the other side); elsewhere it is a field
    another version's schema lacks, not compared, and a note names it."""
    keys = [k for k in sorted(set(saved) | set(now)) if not _uncompared(k) and k not in covered]
    if saved.get("data.global_batch_size") is not None and now.get("data.global_batch_size") is not None:
        # derived from the global batch (record_accumulation), whose inputs are compared themselves; a checkpoint
        # written before it was recorded holds the recipe's own value
        keys = [k for k in keys if k != "trainer.accumulate_grad_batches"]
    unknown = [k for k in keys if (k in saved) != (k in now) and not _in_list(k)]
    if unknown:
        print(f"note: not compared with the checkpoint's recipe: {', '.join(unknown)} (keys of another version)")
    out = []
    for k in keys:
        if k in unknown or (k in saved and k in now and saved[k] == now[k]):
            continue
        old, new = (repr(side[k]) if k in side else "absent" for side in (saved, now))
        out.append(f"{k}: {old} -> {new}")
    return out


# Recipe keys that decide which parameters train and how the optimizer groups them: a resume restores the
# checkpoint's trained weights and optimizer state, which belong to its set, so a change cannot resume (a new run
# from the weights can). model.lora.rank / vit / llm count only when LoRA is on on both sides, optim.backbone_lr only
# as set or unset (set, the backbone's trained weights get their own group), list values as sets.
TRAINED_SET_KEYS = (
    "stage",
    "model.lora.enabled",
    "model.lora.rank",
    "model.lora.vit",
    "model.lora.llm",
    "optim.extra_trainable",
    "optim.extra_groups",
    "optim.backbone_lr",
)


def trained_set_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key changed (old -> new)` for each TRAINED_SET_KEYS entry of the flattened recipes that changes the trained
    parameters or the optimizer's groups (a key one side lacks, e.g. an earlier version's, is not compared)."""
    lora_on = bool(saved.get("model.lora.enabled")) and bool(now.get("model.lora.enabled"))
    out = []
    for key in TRAINED_SET_KEYS:
        if key not in saved or key not in now:
            continue
        old, new = saved[key], now[key]
        if key.startswith("model.lora.") and key != "model.lora.enabled" and not lora_on:
            continue
        if key == "optim.backbone_lr":
            same = (old is None) == (new is None)
        elif isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
            same = sorted(map(str, old or [])) == sorted(map(str, new or []))
        else:
            same = old == new
        if not same:
            out.append(f"{key} changed ({old!r} -> {new!r})")
    return out


def check_trained_set(recipe: Recipe, resume: Path) -> None:
    """A resume trains the parameter set its checkpoint was trained with (`TRAINED_SET_KEYS`, compared with the
    recipe the checkpoint records, else its hyperparameters): otherwise one line saying how to go on, before any
    model is built or file written (the checkpoint's loading failed later with misleading errors)."""
    from operator import attrgetter

    from pixelqa.train.guards import read_resume_metadata

    try:
        saved = read_resume_metadata(resume, recipe.trust_checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise RecipeError(str(err)) from None
    old = {**flatten(dict(saved.get("hyper_parameters") or {})), **dict(saved.get("pixelqa_recipe") or {})}
    if "pixelqa_stage" in saved:
        old["stage"] = saved["pixelqa_stage"]
    changes = trained_set_changes(old, {key: attrgetter(key)(recipe) for key in TRAINED_SET_KEYS})
    if changes:
        back = "set it back" if len(changes) == 1 else "set them back"
        raise RecipeError(
            f"ckpt={recipe.ckpt}: {'; '.join(changes)}, which changes the trained parameters (or the optimizer's "
            f"groups) that a resume restores; {back} to resume, or start a new run from these weights with "
            f"init_from={resume.resolve()} and another output_dir"
        )


class Resumed(NamedTuple):
    """What `check_resume` found: the checkpoint's optimizer step, and what this start changes (settings, then the
    stream entries --allow-stream-change accepted, as `stream/<entry>`)."""

    step: int
    changes: list[str]


def check_resume(
    recipe: Recipe,
    resume: Path,
    fingerprint: dict,
    hparams: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    val_stream: Mapping[str, Any] | None = None,
) -> Resumed:
    """A resume continues its checkpoint's data stream (unless --allow-stream-change); settings changed since are
    printed and returned: module hyperparameters (e.g. a larger trainer.max_steps, whose learning-rate schedule then
    follows the new total), every other key of the flattened recipe `settings` against the one the checkpoint
    records (less RESUME_UNCOMPARED), and the validation shards (`val_stream`, manifest/<source>/<split>). A
    checkpoint that records no recipe (an earlier version) resumes, with a note that its settings were not compared."""
    from pixelqa.train.guards import read_resume_metadata, stream_changes

    try:
        saved = read_resume_metadata(resume, recipe.trust_checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise RecipeError(str(err)) from None
    changes = stream_changes(saved.get("pixelqa_stream"), fingerprint)
    if changes and not recipe.trainer.allow_stream_change:
        raise RecipeError(
            f"ckpt={recipe.ckpt}: the data stream differs from the checkpoint's ({'; '.join(changes)}); resuming "
            f"would continue another stream. Restore those settings, or pass {ALLOW_STREAM_CHANGE} to resume anyway"
        )
    if changes:
        print(f"resuming on a changed data stream ({'; '.join(changes)}), as {ALLOW_STREAM_CHANGE} asks", flush=True)
    saved_hparams = saved.get("hyper_parameters")
    changed = settings_changes(saved_hparams, hparams)
    if settings is not None:
        old_recipe = saved.get("pixelqa_recipe")
        if isinstance(old_recipe, Mapping):
            covered = flatten(dict(saved_hparams)).keys() & flatten(dict(hparams)).keys() if saved_hparams else ()
            changed += recipe_changes(old_recipe, settings, covered)
        else:
            print(
                f"note: {resume} records no recipe (written by an earlier version): its settings beyond the model, "
                "the optimizer and the data stream could not be compared with this run's",
                flush=True,
            )
    old_val = saved.get("pixelqa_val_stream")
    if isinstance(old_val, Mapping) and val_stream is not None:  # unknown (None) on either side: not compared
        changed += [
            f"val_stream/{k}: {old_val[k]!r} -> {val_stream[k]!r}"
            for k in sorted(old_val.keys() & val_stream.keys())
            if old_val[k] is not None and val_stream[k] is not None and old_val[k] != val_stream[k]
        ]
    if changed:
        print(f"resuming with changed settings: {'; '.join(changed)} (MLflow tag {RESUMED_WITH_TAG})", flush=True)
    return Resumed(int(saved.get("global_step") or 0), changed + [f"stream/{c}" for c in changes])


def resumed_recipe_file(recipe_file: Path, step: int) -> Path:
    """Where a resume from step `step` writes its resolved recipe: the first start's recipe.yaml stays as it was."""
    return recipe_file.with_name(f"recipe.resumed-step{step:06d}.yaml")


def holds_checkpoints(folder: Path) -> bool:
    """Whether a folder holds a checkpoint: a `*.ckpt` file, or a DeepSpeed checkpoint directory (what fit writes
    there besides, e.g. the MLflow run id written at the start, is no checkpoint)."""
    if not folder.is_dir():
        return False
    for entry in folder.glob("*.ckpt"):
        if entry.name.startswith("."):  # a temporary of a write in progress or killed (pixelqa.files)
            continue
        if entry.is_file() or (entry.is_dir() and (entry / "checkpoint").is_dir()):
            return True
    return False


def set_aside_folders(ckpt_dir: Path) -> list[Path]:
    """The folders fresh starts set `ckpt_dir`'s checkpoints aside in, oldest first: `checkpoints.previous`,
    `checkpoints.previous-2`, ..."""
    found = []
    for entry in ckpt_dir.parent.glob(ckpt_dir.name + ".previous*"):
        suffix = entry.name[len(ckpt_dir.name + ".previous") :]
        if suffix == "":
            found.append((1, entry))
        elif suffix.startswith("-") and suffix[1:].isdigit():
            found.append((int(suffix[1:]), entry))
    return [entry for _, entry in sorted(found)]


def set_aside_previous(ckpt_dir: Path) -> Path | None:
    """A fresh run in a folder with checkpoints moves them to `checkpoints.previous/`, or, that name taken, to the
    next free `checkpoints.previous-N/` (earlier ones are never deleted); returns where, or None (nothing to move:
    a folder without checkpoints stays, e.g. one a run interrupted before its first checkpoint left)."""
    if not holds_checkpoints(ckpt_dir):
        return None
    earlier = set_aside_folders(ckpt_dir)
    number = 1
    if earlier:
        last = earlier[-1].name[len(ckpt_dir.name + ".previous") :]
        number = int(last[1:]) + 1 if last else 2
    base = ckpt_dir.name + ".previous"
    previous = ckpt_dir.with_name(base if number == 1 else f"{base}-{number}")
    ckpt_dir.rename(previous)
    return previous


def check_model(recipe: Recipe) -> None:
    """A real preset, or the tiny one given a path (a tiny base folder), needs a local model directory (nothing is
    downloaded)."""
    from pixelqa.preflight import check_model_files

    folder = check_model_files(recipe.model)
    if folder is not None:
        from pixelqa.model import release

        if folder.kind == "release" and recipe.stage in (1, 2):
            raise RecipeError(
                f"{folder.file('config.json')}: model_type={release.RELEASE_TYPE!r} is a released UniPixel, but stage "
                f"{recipe.stage} starts from a Qwen2.5-VL base (model_type {release.BASE_TYPE!r}), as the release's "
                "training does; fine-tune a release with recipe=stage3"
            )


def check_init_from(recipe: Recipe) -> dict | None:
    """Load and check `init_from` (a stage N-1 checkpoint, its weights finite); returns the checkpoint dict."""
    if not recipe.init_from:
        return None
    from pixelqa.train.finite import check_finite_weights
    from pixelqa.train.module import check_init_stage, read_checkpoint

    try:
        ckpt = read_checkpoint(recipe.init_from, recipe.trust_checkpoint)
        check_init_stage(ckpt, recipe.stage, recipe.init_from)
    except (FileNotFoundError, ValueError) as err:
        raise RecipeError(str(err)) from None
    # here, not only when the weights are loaded: NaN / inf weights are refused before recipe.yaml or any run exists
    check_finite_weights(ckpt.get("state_dict") or {}, f"init_from={recipe.init_from}")
    return ckpt


def check_eval_split(recipe: Recipe) -> None:
    """`eval.split` is a synthetic split when free generation will read it (eval.scoring=generate|both)."""
    from pixelqa.eval import check_split

    evaluates = recipe.eval.after_fit or recipe.eval.before_fit
    generates = recipe.eval.scoring != "teacher_forced" and {s.name for s in recipe.data.val_sources} == {"synthetic"}
    if not (evaluates and generates):
        return  # teacher-forced validation reads data.val_sources' own splits, not eval.split
    try:
        check_split("synthetic", recipe.eval.split)
    except ValueError as err:  # otherwise found only after training, when the generation pass opens the split
        raise RecipeError(str(err)) from None


def check_extra_groups(recipe: Recipe) -> None:
    """optim.extra_groups must name parameter groups of the model (train.module.GROUPS); checked before any work."""
    from pixelqa.train.module import GROUPS

    unknown = [g for g in recipe.optim.extra_groups if g not in GROUPS]
    if unknown:
        raise RecipeError(f"optim.extra_groups: {unknown} are no parameter groups; valid choices: {', '.join(GROUPS)}")


def preflight(recipe: Recipe) -> dict | None:
    """Every check that can fail before work starts; returns the `init_from` checkpoint (or None)."""
    from pixelqa.preflight import check_launcher, check_precision, check_run
    from pixelqa.train.datamodule import check_sources

    check_launcher(recipe)  # first: a cluster run must not start training on the login node
    check_extra_groups(recipe)
    if recipe.trainer.max_steps < 1 and not (recipe.trainer.max_steps == 0 and recipe.init_from):
        raise RecipeError(
            f"trainer.max_steps={recipe.trainer.max_steps}: expected >= 1 (or 0 with init_from: evaluate that model)"
        )
    check_model(recipe)
    check_sources(recipe.data)
    check_eval_split(recipe)
    accumulation(recipe)
    check_precision(recipe.trainer)
    resume = resolve_ckpt(recipe)
    if resume is not None:
        check_trained_set(recipe, resume)
    check_run(recipe, launcher=False)  # output folders, validation shards and the MLflow store, before any work
    return check_init_from(recipe)


def banner(recipe: Recipe) -> str:
    """What this run is: the embedded demo (and how to run the paper setting) or a user setting."""
    demo = all(recipe.presets.get(g) == p for g, p in DEMO_PRESETS.items()) and recipe.model.path is None
    if not demo:
        return (
            f"PixelQA fit: recipe={recipe.name}, stage {recipe.stage}, "
            f"model={recipe.model.preset}, data={recipe.data.name}"
        )
    from pixelqa.config import recipe_source

    header = []
    source = recipe_source(recipe.name)  # the file load_recipe read (a path, or one in the recipes folder)
    try:
        text = source.read_text(encoding="utf-8") if source is not None else ""
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    paper = "\n".join(header) if header else f"# see {source or f'recipes/{recipe.name}.yaml'}"
    return (
        f"PixelQA fit: running the EMBEDDED DEMO of stage {recipe.stage} (tiny random-init model, synthetic data, "
        f"scale={recipe.presets.get('scale', '?')}).\nTo run the paper setting, see the recipe header:\n{paper}"
    )


def set_tf32(enabled: bool) -> None:
    """TF32 in float32 CUDA matmuls and convolutions on or off (`trainer.tf32`; no effect on a CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)


def apply_process_settings(trainer_cfg: Any) -> None:
    """The recipe's per-process torch settings: intra-op threads, TF32 in float32 CUDA matmuls and convolutions."""
    if trainer_cfg.cpu_threads:
        torch.set_num_threads(int(trainer_cfg.cpu_threads))
    set_tf32(trainer_cfg.tf32)


def build_trainer(recipe: Recipe, logger: Any, callbacks: list, accumulate: int) -> L.Trainer:
    """The Lightning Trainer of a recipe (validation every `trainer.val_check_interval` steps, else at the end)."""
    import lightning as L

    from pixelqa.quiet import progress_enabled
    from pixelqa.train.checkpoint_io import AtomicCheckpointIO
    from pixelqa.train.strategies import build_strategy, strategy_spec

    t = recipe.trainer
    interval = t.val_check_interval
    # An int interval counts optimizer steps in recipes; Lightning counts micro-batches.
    val_every = int(interval) * accumulate if interval else 10**12
    limit_val = t.limit_val_batches if t.limit_val_batches is not None else 1.0
    # DeepSpeed and FSDP get their checkpoint writing from `build_strategy` (DeepSpeed's folders written whole or not
    # at all, FSDP's one file through its own AtomicCheckpointIO); elsewhere AtomicCheckpointIO is given here
    plugins = [] if strategy_spec(recipe)[0] in ("deepspeed", "fsdp") else [AtomicCheckpointIO()]
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(recipe),
        precision=t.precision,
        max_steps=t.max_steps,
        accumulate_grad_batches=accumulate,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=limit_val,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=bool(t.enable_progress_bar) and progress_enabled(True),  # TQDM_DISABLE too
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        plugins=plugins,
        default_root_dir=recipe.output_dir,
        use_distributed_sampler=False,  # the datamodule splits its streams by rank itself
        enable_model_summary=False,
    )


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each tensor counted once (a tied LM head is the input embedding)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def run_params(recipe: Recipe, module: Any) -> dict[str, Any]:
    """What MLflow shows beside the recipe: visual-token budgets, checkpoint cadence, the stream fingerprint and the
    validation shards (`val_stream/manifest/<source>/<split>`). Shards not built yet (synthetic ones are built on
    first use) are left out here: `shard_params` logs them once the data module is set up."""
    from pixelqa.data.budgets import CELL, PixelBudget
    from pixelqa.train.callbacks import checkpoint_interval

    b = PixelBudget.from_data(recipe.data)
    cell = CELL * CELL
    out = {
        "budget/image_tokens": f"{b.image_min_pixels // cell}-{b.image_max_pixels // cell}",
        "budget/frame_tokens": f"{b.frame_min_pixels // cell}-{b.frame_max_pixels // cell}",
        "checkpoint/every_n_steps": checkpoint_interval(recipe),
        "checkpoint/keep": recipe.trainer.keep_checkpoints,
        **dict(zip(("params/trainable", "params/total"), param_counts(module.model))),
    }
    out.update({f"stream/{k}": v for k, v in (module.stream_fingerprint or {}).items()})
    out.update({f"val_stream/{k}": v for k, v in (module.val_stream or {}).items()})
    return {k: v for k, v in out.items() if v is not None or not k.startswith(SHARD_PARAMS)}


SHARD_PARAMS = ("stream/manifest/", "val_stream/manifest/")  # the shards' identities among the MLflow params


def shard_params(module: Any, data: Any) -> dict[str, str]:
    """The shards' identities known now, as MLflow params: the training stream's `stream/manifest/...` (the data
    module fills a fingerprint taken before synthetic shards were built) and the validation sources'
    `val_stream/manifest/<source>/<split>`, whose unknown entries in `module.val_stream` (saved in checkpoints) are
    set here too."""
    from pixelqa.train.guards import source_manifests

    val = source_manifests(data, data.val_sources)
    if module.val_stream is not None:
        module.val_stream.update({k: v for k, v in val.items() if module.val_stream.get(k) is None})
    out = {f"stream/{k}": v for k, v in (module.stream_fingerprint or {}).items()}
    out.update({f"val_stream/{k}": v for k, v in val.items()})
    return {k: v for k, v in out.items() if k.startswith(SHARD_PARAMS) and v is not None}


def validation_log_step(trainer: Any) -> int:
    """The logger step of a validation of the current weights: Lightning logs one inside fit, after optimizer step
    N, at N - 1 (its logger step counts the steps finished before the current batch's), before any step at 0."""
    from pixelqa.train.callbacks import logger_step

    return max(logger_step(trainer) - 1, 0)


@contextmanager
def logged_as_fit_validation(trainer: Any) -> Iterator[None]:
    """Run a `trainer.validate` after fit so that its metrics are logged at the step a validation inside fit of the
    same weights gets (`validation_log_step`), not one later: every validation of a run on one step scale."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None or not isinstance(getattr(loop, "_batches_that_stepped", None), int):
        yield  # another Lightning's internals: logged where it logs them
        return
    saved = loop._batches_that_stepped
    loop._batches_that_stepped = validation_log_step(trainer)
    try:
        yield
    finally:
        loop._batches_that_stepped = saved


def metrics_of(trainer: Any, prefix: str = "") -> dict[str, float]:
    """The trainer's current logged metrics as floats (optionally renamed with a prefix)."""
    out = {}
    for k, v in trainer.callback_metrics.items():
        val = float(v.item() if isinstance(v, torch.Tensor) else v)
        out[f"{prefix}{k}"] = val
    return out


def python_command() -> str:
    """How to call this interpreter from the working directory: `.venv/bin/python` for a venv below it, else python."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return "python"


def fit_command(args: list[str], *extra: str, module: str = "pixelqa.fit") -> str:
    """The shell command that runs `module` (a recipe CLI) with `args` (any `ckpt=` dropped) and `extra`."""
    from pixelqa.launch.settings import is_launcher_arg  # a launcher chose where this ran, not what evaluates it

    kept = [a for a in args if not a.startswith("ckpt=") and a != PRINT_CONFIG and not is_launcher_arg(a)]
    return shlex.join([python_command(), "-m", module, *kept, *extra])


def resume_hint(args: list[str]) -> str:
    """What to type after an interrupted run: resume from its last checkpoint, or start again if it has none (and
    then how to continue the run whose checkpoints a fresh start set aside, when there is one)."""
    from pixelqa.files import recoverable

    try:
        out = Path(str(load_recipe([a for a in args if not a.startswith("ckpt=") and a != PRINT_CONFIG]).output_dir))
    except RecipeError:
        return f"interrupted. Run again with: {fit_command(args)}"
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    # a file, or the folder a DeepSpeed checkpoint is (a kill while it was replaced left it aside: ckpt=last puts
    # it back)
    if last.exists() or (last.is_symlink() and recoverable(os.path.realpath(last))):
        return f"interrupted. Resume from its last checkpoint ({last}) with:\n  {fit_command(args, 'ckpt=last')}"
    hint = f"interrupted before the first checkpoint. Start again with:\n  {fit_command(args)}"
    aside = [p for p in set_aside_folders(ckpt_dir) if (p / "last.ckpt").exists()]
    if aside and not holds_checkpoints(ckpt_dir):
        prev = aside[-1]
        newest = os.readlink(prev / "last.ckpt") if (prev / "last.ckpt").is_symlink() else "last.ckpt"
        steps = [shlex.join(["rm", "-r", str(ckpt_dir)])] if ckpt_dir.exists() else []  # no checkpoint in it
        steps += [shlex.join(["mv", str(prev), str(ckpt_dir)]), fit_command(args, "ckpt=last")]
        hint += (
            f"\nThe checkpoints a fresh start set aside are kept in {prev} (newest: {newest}); to continue that run "
            f"instead (this one has no checkpoint to lose):\n  {' && '.join(steps)}"
        )
    return hint


def where_report(recipe: Recipe, args: list[str], logger: Any, overlays: list[Path]) -> str:
    """Where a finished run left its results: checkpoint, overlays, MLflow store, and the `mlflow ui` command."""
    from pixelqa import tracking

    out = Path(recipe.output_dir).resolve()
    # last.ckpt links to the newest step checkpoint: name the file itself
    evaluated_only = recipe.trainer.max_steps == 0
    ckpt = f"none written (trainer.max_steps=0: {recipe.init_from} evaluated)" if evaluated_only else None
    lines = [
        "",
        "==== PixelQA fit results ====",
        f"checkpoint: {ckpt or (out / 'checkpoints' / 'last.ckpt').resolve()}",
    ]
    if overlays:
        lines.append(
            f"overlays:   {overlays[-1].parent.resolve()}  (ground truth | prediction, PNG per image, GIF per video)"
        )
    if logger is not None:
        uri, artifacts = tracking.resolve_uris(recipe.tracking)
        lines += [
            f"MLflow:     store {uri}, experiment {recipe.tracking.experiment!r}, run {logger.run_id}",
            f"            artifacts {artifacts}; teacher-forced J&F is the metric 0_J_and_F (also val/J_and_F), "
            "free-generation J&F val/gen/J_and_F",
            f"view:       mlflow ui --backend-store-uri {uri}",
            f"            then open http://127.0.0.1:5000/#/experiments/{logger.experiment_id}/runs/{logger.run_id}",
        ]
    if not evaluated_only:
        lines.append(f"evaluate:   {evaluate_command(recipe, args)}")
    return "\n".join(lines)


def evaluate_command(recipe: Recipe, args: list[str]) -> str:
    """The `pixelqa.evaluate` command that scores the run's last checkpoint on the samples its validation scored:
    evaluate reads the first `eval.max_samples` of `eval.split`, fit the first `validation_limit` of its validation
    source's split, so both are pinned where they differ."""
    from pixelqa.eval.synthetic_generate import fit_validation_split
    from pixelqa.train.datamodule import validation_limit

    pins: dict[str, Any] = {}
    cap = validation_limit(recipe.data, recipe.eval.max_samples)
    if cap != recipe.eval.max_samples:  # cap is set here (it is None only when eval.max_samples is None too)
        pins["eval.max_samples"] = cap
    split = fit_validation_split(recipe)
    if split != recipe.eval.split:
        pins["eval.split"] = split
    kept = [a for a in args if a.split("=", 1)[0].lstrip("+") not in pins]
    return fit_command(kept, "ckpt=last", *(f"{k}={v}" for k, v in pins.items()), module="pixelqa.evaluate")


SCORING_LEGEND = (
    "val/*: teacher-forced (the model reads the reference answer; masks on the frames sampled for the model); "
    "val/gen/*: free generation (greedy answers; masks on every frame). val/samples and val/gen/samples: the "
    "samples each covers; val/loss: the objective over the whole pass (each term summed / its count)."
)


def print_summary(metrics: dict[str, float]) -> None:
    """The final metrics, one `name: value` per line, validation metrics last (headline last: J&F, QA accuracy),
    under a line that says which scoring each prefix is (the lines after the header stay `name: value` only)."""
    order = sorted(metrics, key=lambda k: (k.startswith("val/"), k in ("val/J&F", "val/qa_acc"), k))
    if any(k.startswith(("val/", "untrained/val/")) for k in metrics):
        print(f"\n{SCORING_LEGEND}", end="")
    print("\n==== PixelQA fit summary ====")
    for k in order:
        print(f"{k}: {metrics[k]:.6g}")


def run(args: list[str], parent_run_id: str | None = None) -> dict[str, float]:
    """Train one stage from command-line style args; returns the final metrics (val/J&F, val/qa_acc, ...).

    With `--print-config` among the args: print the resolved recipe, return {} and do nothing else.
    """
    try:
        with ExitStack() as held:  # the output_dir lock lives as long as the run, not the process (grid cells)
            return _run(args, parent_run_id, held)
    except RecipeError as err:
        if reports_error(err, _is_rank_zero()):
            raise
        # A launcher that stops every process at the first exit (torchrun) must not stop rank 0 before it reports
        time.sleep(QUIET_RANK_EXIT_DELAY_S)
        raise SystemExit(2) from None


def reports_error(err: RecipeError, rank_zero: bool) -> bool:
    """Whether this process prints `err`: all do, except that an error every DDP process raises alike
    (`EveryRankError`, e.g. too few validation samples for the processes) is printed by rank 0 only."""
    if rank_zero:
        return True  # without importing the training stack: a recipe error on the command line stays fast
    from pixelqa.train.datamodule import EveryRankError

    return not isinstance(err, EveryRankError)


def _run(args: list[str], parent_run_id: str | None, held: ExitStack) -> dict[str, float]:
    args = ["trainer.allow_stream_change=true" if a == ALLOW_STREAM_CHANGE else a for a in args]
    if PRINT_CONFIG in args:
        cfg = load_recipe([a for a in args if a != PRINT_CONFIG])
        record_accumulation(cfg, to_object(cfg))  # the accumulation the run uses, as its recipe.yaml records it
        print_config(cfg)
        return {}
    import lightning as L
    from omegaconf import OmegaConf

    from pixelqa import tracking
    from pixelqa.data.shards import write_text_atomic
    from pixelqa.eval.synthetic_generate import after_fit_generation, check_generation_scoring
    from pixelqa.quiet import silence_library_noise
    from pixelqa.train.callbacks import FitTimer, OverlayLogger, build_callbacks
    from pixelqa.train.data_wait import DataWaitTimer
    from pixelqa.train.datamodule import ShardDataModule
    from pixelqa.train.guards import metadata_cache
    from pixelqa.train.module import load_init_weights, module_class

    start = time.time()
    silence_library_noise()
    held.enter_context(metadata_cache())  # preflight's and the resume's checks read the checkpoint once
    cfg = load_recipe(list(args))
    recipe = to_object(cfg)
    init_ckpt = preflight(recipe)
    check_generation_scoring(recipe)  # eval.scoring=generate|both needs synthetic validation data
    rank_zero = _is_rank_zero()
    if rank_zero:
        # before anything is set aside, resumed or written: a second fit in the same output_dir interleaved
        # checkpoints, recipe.yaml and MLflow runs, and both reported success
        from pixelqa.locks import folder_lock

        held.enter_context(folder_lock(recipe.output_dir, "fit", FIT_LOCK_ADVICE))
    from pixelqa.preflight import apply_release_overrides, release_override_warning, sam_init_warning

    sam_warning = sam_init_warning(recipe)
    if sam_warning and rank_zero:
        print(sam_warning, file=sys.stderr, flush=True)
    # Before recipe.yaml and the MLflow params: they must show what the run uses, not what the release overrode
    # (a grid over such a switch on a release would otherwise label identical cells differently).
    overridden = apply_release_overrides(cfg, recipe)
    if overridden:
        recipe = to_object(cfg)
        if rank_zero:
            warning = release_override_warning(recipe.model.path, overridden, "recipe.yaml and MLflow")
            print(warning, file=sys.stderr, flush=True)
    recipe = record_accumulation(cfg, recipe)  # data.global_batch_size's accumulation, as recorded
    recipe_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    flat_recipe = flatten(cfg)  # what checkpoints record, for the resume checks (`check_resume`)
    recipe_file = Path(recipe.output_dir) / "recipe.yaml"
    if rank_zero:
        print(banner(recipe))
    apply_process_settings(recipe.trainer)
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    accumulate = accumulation(recipe)
    resume = resolve_ckpt(recipe)
    ckpt_dir = Path(recipe.output_dir) / "checkpoints"
    if resume is None and rank_zero:
        moved = set_aside_previous(ckpt_dir)
        if moved is not None:
            print(
                f"fresh run: the previous checkpoints of {ckpt_dir} moved to {moved} (to continue that run instead, "
                "move them back and pass ckpt=last)"
            )

    from pixelqa.train.strategies import model_dtype_for

    if model_dtype_for(recipe) != recipe.model.dtype:
        print(f"trainer.strategy={recipe.trainer.strategy}: model stored in {model_dtype_for(recipe)} (bf16 compute)")
        cfg.model.dtype = model_dtype_for(recipe)
    module = module_class(recipe.stage)(
        model=_plain(cfg.model),
        optim=_plain(cfg.optim),
        total_steps=recipe.trainer.max_steps,
        seed=recipe.seed,
        accumulate=accumulate,
        num_overlays=recipe.tracking.num_overlays if recipe.tracking.log_overlays else 0,
    )
    from pixelqa.train.guards import base_reference, source_manifests, stream_fingerprint

    module.stream_fingerprint = stream_fingerprint(recipe, world_size(recipe.trainer), accumulate)
    module.base_reference = base_reference(recipe.model)
    module.run_recipe = flat_recipe
    module.val_stream = source_manifests(recipe.data, recipe.data.val_sources)
    resumed = None
    if resume is not None:
        resumed = check_resume(
            recipe, resume, module.stream_fingerprint, module.hparams, flat_recipe, dict(module.val_stream)
        )
    # a resume keeps the first start's recipe.yaml (what MLflow's params show) and writes its own beside it
    written = recipe_file
    if resumed is not None and recipe_file.is_file():
        written = resumed_recipe_file(recipe_file, resumed.step)
    if rank_zero:
        first = f"; the first start's is {recipe_file.name}" if written != recipe_file else ""
        print(f"resolved recipe: {written} (print it with {PRINT_CONFIG}{first})", flush=True)
        trainable, total = param_counts(module.model)
        print(f"parameters: {trainable:,} trained of {total:,} (stage {recipe.stage}; MLflow params/trainable)")
    if rank_zero:  # after the resume checks: a refused resume leaves the run's recipe files as they were
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(written, recipe_yaml)
    if init_ckpt is not None and resume is None:
        load_init_weights(module, init_ckpt, recipe.init_from, finite_checked=True)  # by check_init_from
        if rank_zero:
            print(f"initialised from {recipe.init_from} (stage {init_ckpt.get('pixelqa_stage')})")
    # eval.max_samples caps fit's validation too: its two scorings and the printed evaluate command, same samples
    datamodule = ShardDataModule(
        recipe.data,
        module.model.processor,
        recipe.model.memory.variant,
        seed=recipe.seed,
        max_samples=recipe.eval.max_samples,
    )

    run_id = tracking.load_run_id(ckpt_dir) if resume is not None else None
    logger = tracking.build_logger(
        recipe.tracking,
        run_name=recipe.name,
        run_id=run_id,
        parent_run_id=parent_run_id,
        tags={"stage": str(recipe.stage), "output_dir": str(Path(recipe.output_dir).resolve())},
    )
    callbacks = build_callbacks(recipe, ckpt_dir, logger)
    data_wait = DataWaitTimer()  # the loader's share of step time: summary and MLflow
    fit_timer = FitTimer(start)  # time/fit_s summed across resumes (kept in each checkpoint)
    # the shards' identities, once synthetic shards built on first use exist (params and module.val_stream)
    shards = tracking.ParamsAtSetup(partial(shard_params, module, recipe.data))
    callbacks += [data_wait, fit_timer, shards]
    trainer = build_trainer(recipe, logger, callbacks, accumulate)
    if trainer.is_global_zero and logger is not None:
        if run_id is None:
            tracking.log_recipe_params(logger, {**flatten(cfg), **run_params(recipe, module)})
            tracking.log_text(logger, recipe_yaml, "recipe.yaml")
        else:  # a resume: params keep the run's first values (MLflow fixes them); its own recipe beside them
            tracking.log_text(logger, recipe_yaml, written.name)
        if resumed is not None:
            # the steps from here on are logged again (same values when nothing changed): per step, the last point
            # is the one the final weights went through (docs/training-at-scale.md, "Streams and resumes")
            tracking.append_tag(logger, RESUMED_AT_TAG, str(resumed.step), ",")
            if resumed.changes:
                said = f"at step {resumed.step}: {'; '.join(resumed.changes)}"
                tracking.append_tag(logger, RESUMED_WITH_TAG, said, " | ")
        tracking.save_run_id(ckpt_dir, logger.run_id)

    results: dict[str, float] = {}
    if recipe.eval.before_fit and resume is None:
        if recipe.eval.scoring != "generate":
            trainer.validate(module, datamodule=datamodule, verbose=False)
            results.update(metrics_of(trainer, prefix="untrained/"))
        if trainer.is_global_zero:
            results.update(after_fit_generation(module.model, recipe, prefix="untrained/"))
    try:
        if recipe.trainer.max_steps > 0:  # 0: evaluate the init_from model only (evaluation-time ablation cells)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl-C into exit(1) after its shutdown; main() says how to resume
            raise KeyboardInterrupt from None
        raise
    results.update({k: v for k, v in metrics_of(trainer).items() if k.startswith(("train/", "data/"))})
    if recipe.eval.after_fit:
        if recipe.eval.scoring != "generate":
            # the last validation inside fit scored these very weights: its values stand (logged once, not twice)
            if module.validated_step != trainer.global_step:
                with logged_as_fit_validation(trainer):
                    trainer.validate(module, datamodule=datamodule, verbose=False)
            results.update({k: v for k, v in metrics_of(trainer).items() if k.startswith("val/")})
        generated = after_fit_generation(module.model, recipe) if trainer.is_global_zero else {}
        if generated and logger is not None:  # next to the teacher-forced val/ metrics of the same weights
            logger.log_metrics(generated, step=validation_log_step(trainer))
        results.update(generated)
    results["train/steps"] = float(trainer.global_step)
    results.update(datamodule.damage_metrics())  # records lost to shard damage: summary, table and MLflow
    results.update(data_wait.metrics())
    results["time/fit_s"] = fit_timer.elapsed()
    if trainer.is_global_zero:
        if logger is not None:
            ckpts = {"last": str((ckpt_dir / "last.ckpt").resolve()), "dir": str(ckpt_dir.resolve())}
            tracking.log_checkpoint_paths(logger, ckpts)
            rows = [{"metric": k, "value": v} for k, v in sorted(results.items())]
            tracking.log_table(logger, rows, "final_metrics", Path(recipe.output_dir) / "tables")
            logger.experiment.log_metric(logger.run_id, "time/fit_s", results["time/fit_s"])
            logger.finalize("success")
        print_summary(results)
        overlays = next((c.written for c in callbacks if isinstance(c, OverlayLogger)), [])
        print(where_report(recipe, list(args), logger, overlays), flush=True)
    return results


def _plain(node: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def _is_rank_zero() -> bool:
    import os

    return (
        int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
        and int(os.environ.get("NODE_RANK", "0")) == 0
    )


def main(argv: list[str] | None = None) -> None:
    """Entry of `python -m pixelqa.fit`: a recipe error exits 2 with its message, Ctrl-C 130 with the resume command,
    a step whose loss or gradient is NaN / inf 1 with the line that says where (`pixelqa.train.finite`)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        run_cli(run, __doc__, args)
    except KeyboardInterrupt:
        print("\n" + resume_hint(args), file=sys.stderr, flush=True)
        sys.exit(130)
    except RuntimeError as err:
        from pixelqa.train.finite import NonFiniteStepError  # only now: `-h` and recipe errors stay fast

        if not isinstance(err, NonFiniteStepError):
            raise
        if _is_rank_zero():  # every rank stops at the same step: rank 0 says it once
            print(str(err), file=sys.stderr, flush=True)
        else:  # a launcher that stops all at the first exit (torchrun) must not stop rank 0 before it reports
            time.sleep(QUIET_RANK_EXIT_DELAY_S)
        sys.exit(1)


if __name__ == "__main__":
    main()
