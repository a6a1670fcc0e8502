"""Recipe loading: a defaults chain of presets, dotlist overrides, a typed schema check, printing.

A recipe is a YAML file in `recipes/` (e.g. `recipes/stage3.yaml`), or a `.yaml` file anywhere given as a path.
Its `defaults:` list names one preset per group, each a YAML file in a sub-folder: `GROUP/NAME.yaml` beside the
recipe file first, then in the package's `recipes/` (`recipes/model/tiny.yaml`, `recipes/data/synthetic.yaml`,
...). The recipe body is merged over its presets, and command-line arguments over both:

    python -m pixelqa.fit recipe=stage3 model=unipixel-3b model.path=/ckpt/qwen trainer.max_steps=100

`group=preset` swaps a preset; `a.b.c=value` sets a key, its value typed as YAML (`parse_value`); `${a.b}` in a
value, from a file or the command line, is resolved against the composed recipe. The result is checked against the
`Recipe` dataclass schema: an unknown key or a value of the wrong type fails with a message naming the key and what
is valid.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    GrammarParseError,
    InterpolationKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from pixelqa.launch.settings import EXECUTORS, LauncherConfig
from pixelqa.model.config import UniPixelConfig
from pixelqa.resources import ResourceNotFoundError, resource_dir
from pixelqa.switches import SWITCH_CHOICES

# `model.seed` (every random initialisation: the tiny backbone, SAM without a checkpoint, projectors, LoRA, new token
# rows; and the released loss's per-step object draw) follows the run's `seed` unless a preset or `model.seed=N` sets
# it: `seed=1` is then another replicate (init and data order), `seed=1 model.seed=0` the seed-0 init with another
# data order. Resolved (a plain int) in recipe.yaml, MLflow params and the checkpoint's hyper_parameters.model.
MODEL_SEED_DEFAULT = "${seed}"

GROUPS: tuple[str, ...] = ("model", "data", "trainer", "optim", "tracking", "eval", "scale", "launcher")
# Presets of these groups set keys anywhere in the recipe (merged at the root, not under the group name).
ROOT_GROUPS: tuple[str, ...] = ("scale",)


class RecipeError(ValueError):
    """A recipe that cannot be loaded: unknown key, wrong type, missing preset or invalid choice."""


@dataclass
class SourceConfig:
    """One source of a data mixture: its registry name, split and repeat factor (paper Table 12)."""

    name: str = "synthetic"
    split: str = "train"
    repeat: float = 1.0


@dataclass
class DataConfig:
    """Which shards feed training and validation, and how samples become batches."""

    name: str = "synthetic"
    shards: str = "shards"  # root of built shards: <shards>/<source>/<split>/*.tar
    raw_root: str | None = None  # root of the raw datasets (needed to build missing shards of real sources)
    build_if_missing: bool = True  # build missing shards on first use (always possible for `synthetic`)
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    val_sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(split="val")])
    num_frames: int = 8  # frames sampled per training video (paper: 8)
    prompt_mode: str = "keep"  # training prompts: keep | point_box (stage 1: point or box from the mask) | point | box
    min_pixels: int = 128 * 28 * 28  # per-frame visual-token budget (paper: 128 to 256 tokens)
    max_pixels: int = 256 * 28 * 28
    image_min_pixels: int = 128 * 28 * 28  # per-image budget (released: up to 2,048 tokens); pixelqa.data.budgets
    image_max_pixels: int = 2048 * 28 * 28
    max_tokens: int = 4096  # sequence cap (paper: 4K)
    max_redraws: int = 10  # an unusable sample is replaced by up to this many other draws of its source
    memory_prompts: str = "keep"  # keep | point_box: memory pre-fill prompts redrawn as points / boxes (as released)
    group_by_type: bool = False  # every micro-batch of an optimizer step, on every rank, holds one data type
    batch_size: int = 1  # per device
    # if set: accumulate = global / (batch_size * devices * nodes), recorded as trainer.accumulate_grad_batches; a
    # trainer.accumulate_grad_batches other than 1 that disagrees is refused (pixelqa.fit.accumulation)
    global_batch_size: int | None = None
    val_batch_size: int = 1
    num_workers: int = 0
    shuffle_buffer: int = 1000
    val_samples: int | None = None  # cap on validation samples (None = the whole split, exactly once)
    synthetic_train: int = 512  # size of the synthetic splits when they are built on first use
    synthetic_val: int = 64
    strict: bool = False  # damaged shard data is fatal (default: skipped with a warning, counted in the summary)


@dataclass
class TrainerConfig:
    """Arguments of `lightning.Trainer` that recipes set."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed (see recipes/trainer/*.yaml)
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed (not on the CPU); not bf16-true (REFUSED_CHOICES)
    max_steps: int = 100
    accumulate_grad_batches: int = 1
    # validate every N optimizer steps (an integer >= 1); None = once, at the end of the run. Typed Any so that a
    # float (Lightning's fraction of an epoch) or 0 is refused in one line naming the key (_check_ranges)
    val_check_interval: Any = None
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    limit_val_batches: Any = None
    enable_progress_bar: bool = True
    deterministic: bool = False
    checkpoint_every_n_steps: int | None = None  # None = every max_steps // 5 (10..1000); always at the end too
    keep_checkpoints: int = 2  # newest step checkpoints kept; last.ckpt links to the newest (>= 2: never dangling)
    allow_stream_change: bool = False  # resume although the data-stream fingerprint differs (--allow-stream-change)
    cpu_threads: int | None = None  # torch intra-op threads per process (None = torch's default)
    # TF32 for float32 matmuls and convolutions on CUDA GPUs, as the released training sets it (no effect on CPU);
    # false: full float32 precision (torch's default for matmuls)
    tf32: bool = True


@dataclass
class OptimConfig:
    """AdamW with linear warm-up over `warmup_ratio` of the steps, then cosine decay."""

    lr: float = 2e-5
    decoder_lr: float = 5e-6  # mask decoder (stage 3)
    # the pre-trained backbone's trainable weights (LoRA, extra_trainable and extra_groups under Qwen) when set;
    # None: `lr`, as released. A demo started from a small pre-trained base keeps what it knows at a lower rate.
    backbone_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Parameter-name substrings trained in addition to the stage's groups, at `lr` (e.g. the random-init tiny
    # demo trains `lm_head`: a frozen random LM head caps every logit near 1 and nothing but <|seg|> can win).
    extra_trainable: list[str] = field(default_factory=list)
    # UniPixel.parameter_groups() trained in addition to the stage's (stage 3 as released: the full embedding
    # and LM-head matrices and SAM's image encoder, the latter at decoder_lr)
    extra_groups: list[str] = field(default_factory=list)


@dataclass
class TrackingConfig:
    """MLflow: SQLite store in the working directory and an explicit artifact folder by default."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlruns.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "pixelqa"
    run_name: str | None = None
    log_overlays: bool = True
    num_overlays: int = 4


@dataclass
class EvalConfig:
    """Evaluation after (or without) training."""

    after_fit: bool = True  # run the validation metrics at the end of `fit`
    before_fit: bool = False  # also score the untrained model first (reported as untrained/val/...)
    benchmark: str = "synthetic"
    split: str = "val"
    max_samples: int | None = None
    # synthetic split: teacher_forced (arg-max under the reference answer, masks of its <|seg|>: val/J&F, ...),
    # generate (free greedy generation, pixelqa.eval.synthetic_generate: val/gen/J&F, ...) or both
    scoring: str = "teacher_forced"
    generate_max_new_tokens: int = 24  # answers are short
    generate_per_task: int | None = None  # generate for at most this many samples of each task (None: all)


@dataclass
class Recipe:
    """The whole run description: one object, checked, printed and logged."""

    name: str = "recipe"
    stage: int = 3
    # data stream, dropout and the per-step RNGs; through model.seed, unless that is set, also the initialisation and
    # the released loss's object draw (MODEL_SEED_DEFAULT)
    seed: int = 0
    output_dir: str = "runs/${name}"
    init_from: str | None = None  # checkpoint of the previous stage
    ckpt: str | None = None  # `last` or a path: resume this run
    trust_checkpoint: bool = False  # load init_from / ckpt with full unpickling (can run code): trusted files only
    presets: dict[str, str] = field(default_factory=dict)  # filled by load_recipe: group -> chosen preset
    model: UniPixelConfig = field(default_factory=UniPixelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # grid cells as jobs (pixelqa.launch)


# Keys whose value must be one of a closed set.
CHOICES: dict[str, tuple] = {
    "stage": (1, 2, 3),
    "eval.scoring": ("teacher_forced", "generate", "both"),
    "model.preset": ("tiny", "unipixel-3b", "unipixel-7b"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.mask_decoder.arch": ("micro", "hiera_t", "hiera_s", "hiera_b+", "hiera_l"),
    "model.mask_decoder.mode": ("propagate", "independent"),
    "model.mask_decoder.prompt_padding": ("released", "none"),
    "model.memory.variant": ("ref_only", "ref_seg", "ref_seg_pool", "memory_bank"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed", "deepspeed_stage_2", "deepspeed_stage_3"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),  # Lightning's names
    "trainer.precision": ("32-true", "32", "bf16-mixed", "16-mixed"),  # 16-mixed: not on a CPU (preflight)
    "data.prompt_mode": ("keep", "point_box", "point", "box"),
    "data.memory_prompts": ("keep", "point_box"),
    "launcher.executor": EXECUTORS,
    **{f"model.{key}": values for key, values in SWITCH_CHOICES.items()},
}


def recipes_dir() -> Path:
    """The folder holding recipes: $PIXELQA_RECIPES, $PIXELQA_HOME/recipes, a clone's `recipes/`, else the copies a
    wheel installs (pixelqa.resources); a RecipeError saying where it looked when there is none."""
    try:
        return resource_dir("recipes")
    except ResourceNotFoundError as err:
        raise RecipeError(str(err)) from None


def _read_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise RecipeError(f"{what}: file {path} does not exist")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise RecipeError(f"{what}: {path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def available_presets(group: str, root: Path | None = None) -> list[str]:
    """Names of the presets of a group (`model`, `data`, ...) in a recipes folder (default: the package's)."""
    folder = (root or recipes_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def available_recipes(root: Path | None = None) -> list[str]:
    """Names of the top-level recipes."""
    return sorted(p.stem for p in (root or recipes_dir()).glob("*.yaml"))


def _check_preset_name(group: str, name: str) -> None:
    """Refuse a preset name that is not one file name: `model=../../etc/x` would read a file outside `model/`."""
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise RecipeError(
            f"{group}={name}: a preset is a file name in a {group}/ folder (e.g. {group}=NAME for {group}/NAME.yaml), "
            "not a path"
        )


def _preset_folders(beside: Path, root: Callable[[], Path]) -> tuple[list[Path], str]:
    """Where presets are looked up, in order: the recipe file's folder, then the package's recipes folder (once when
    they are the same); and a note when there is no package recipes folder."""
    folders = [beside]
    try:
        package = root()
    except RecipeError:  # a recipe beside its own presets needs no package recipes folder
        return folders, " (no package recipes folder found: set PIXELQA_HOME=DIR to a PixelQA clone)"
    if package.resolve() != beside.resolve():
        folders.append(package)
    return folders, ""


def _preset_path(group: str, name: str, beside: Path, root: Callable[[], Path]) -> Path:
    """The file of preset `group=name`: `group/name.yaml` beside the recipe file, else in the package's recipes
    folder; a RecipeError listing the valid choices of both places when neither has it."""
    _check_preset_name(group, name)
    folders, note = _preset_folders(beside, root)
    for folder in folders:
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    places = "; ".join(f"{', '.join(available_presets(group, f)) or 'none'} (in {f / group})" for f in folders)
    raise RecipeError(f"{group}={name}: no such preset; valid choices: {places}{note}")


def _load_preset(group: str, name: str, beside: Path, root: Callable[[], Path]) -> DictConfig:
    cfg = _read_yaml(_preset_path(group, name, beside, root), f"{group}={name}")
    cfg.pop("defaults", None)
    return cfg


def _split_args(args: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """(recipe name, group selections, dotlist overrides) of command-line arguments."""
    recipe, groups, dotlist = None, {}, []
    for arg in args:
        if "=" not in arg:
            raise RecipeError(f"argument {arg!r}: expected key=value (e.g. trainer.max_steps=10 or model=tiny)")
        key, value = arg.split("=", 1)
        if key == "recipe":
            recipe = value
        elif key in GROUPS and "." not in key:
            groups[key] = value
        else:
            dotlist.append(arg)
    return recipe, groups, dotlist


def _recipe_path(recipe: str, root: Callable[[], Path]) -> Path:
    path = Path(recipe).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.absolute()
    candidate = root() / f"{recipe}.yaml"
    if not candidate.is_file():
        valid = ", ".join(available_recipes(root())) or f"none ({root()} holds no .yaml file)"
        raise RecipeError(f"recipe={recipe}: no such recipe; valid choices: {valid}")
    return candidate


# The file each recipe name was last loaded from (load_recipe), for what is shown from it (fit's banner).
_RECIPE_SOURCES: dict[str, Path] = {}


def recipe_source(name: str) -> Path | None:
    """The recipe file `load_recipe` last read for a recipe of this name (None when unknown): a recipe given as a
    path, or found in the recipes folder (pixelqa.resources)."""
    if name in _RECIPE_SOURCES:
        return _RECIPE_SOURCES[name]
    try:
        path = recipes_dir() / f"{name}.yaml"
    except RecipeError:
        return None
    return path if path.is_file() else None


def _defaults_of(cfg: DictConfig, where: str) -> list[tuple[str, str]]:
    """The `defaults:` list as (group, preset) pairs in order; ("_self_", "") marks where the body goes."""
    defaults = cfg.pop("defaults", [])
    chosen: list[tuple[str, str]] = []
    for entry in defaults or []:
        if entry == "_self_":
            chosen.append(("_self_", ""))
            continue
        if not isinstance(entry, DictConfig) or len(entry) != 1:
            raise RecipeError(
                f"{where}: defaults entries must be `_self_` or single `group: preset` pairs, got {entry}"
            )
        ((group, name),) = entry.items()
        if group not in GROUPS:
            raise RecipeError(f"{where}: defaults group {group!r} unknown; valid groups: {', '.join(GROUPS)}")
        chosen.append((str(group), str(name)))
    if ("_self_", "") not in chosen:
        chosen.append(("_self_", ""))  # as in Hydra: without `_self_`, the body overrides its presets
    return chosen


def _check_choices(cfg: DictConfig) -> None:
    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        refused = REFUSED_CHOICES.get(key, {})
        if value in refused:
            raise RecipeError(f"{key}={value!r} is not supported: {refused[value]}")
        if value not in valid:
            raise RecipeError(f"{key}={value!r} is not valid; valid choices: {', '.join(map(str, valid))}")


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    """The keys that exist beside (or, failing that, above) an unknown dotted key."""
    parts = str(dotted).split(".")[:-1]
    while True:
        parent = ".".join(parts)
        node = OmegaConf.select(schema, parent) if parent else schema
        if isinstance(node, DictConfig):
            return [f"{parent}.{k}" if parent else str(k) for k in node.keys()]
        if not parts:
            return []
        parts.pop()


_LITERAL = "write \\${ for a literal ${"  # OmegaConf's escape, in a recipe file as on the command line
_ABSENT = object()  # what OmegaConf.select returns for a key that does not exist

# Stands for '#' while a command-line value is parsed as YAML, which would read ` #...` as a comment and drop it.
_HASH = "\ue000"


def _restore_hash(node: Any) -> Any:
    if isinstance(node, str):
        return node.replace(_HASH, "#")
    if isinstance(node, list):
        return [_restore_hash(v) for v in node]
    if isinstance(node, dict):
        return {_restore_hash(k): _restore_hash(v) for k, v in node.items()}
    return node


def _parse_yaml(raw: str) -> Any:
    """`raw` read as YAML into plain data (`${...}` kept as text), every `#` kept: nothing in it is a comment."""
    hide = "#" in raw and _HASH not in raw
    try:
        parsed = OmegaConf.from_dotlist([f"v={raw.replace('#', _HASH) if hide else raw}"])
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0]
        raise RecipeError(f"value {raw!r} is not valid YAML ({reason}); quote it ('...') to take it as text") from None
    except GrammarParseError as err:
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise RecipeError(f"value {raw!r} holds no valid interpolation ({reason}); {_LITERAL}") from None
    value = OmegaConf.to_container(parsed, resolve=False)["v"]  # resolved later, against the whole recipe
    return _restore_hash(value) if hide else value


def _is_flow(value: Any, raw: str) -> bool:
    """Whether a parsed mapping or list was written in YAML flow syntax: `{a: 1}`, `[1, 2]`."""
    return raw.lstrip().startswith("{" if isinstance(value, dict) else "[")


def parse_value(raw: str) -> Any:
    """A command-line value (the text after `key=`) typed as YAML, as Hydra does (`5` an int, `true` a bool,
    `[a, b]` a list, `{a: 1}` a mapping, `null` None), except that nothing in it is a comment: `output_dir=/data/run #1`
    is the folder `/data/run #1`, not `/data/run` (a shell passes the ` #1` only when it is quoted, so it is meant),
    and that a mapping or list needs braces or brackets: `/data/run: 2` (YAML's block mapping {'/data/run': 2}) and
    `- a` (a block list) stay that text, stripped. `${...}` is kept, resolved when the whole recipe is composed."""
    if raw.lstrip()[:1] in ("&", "*", "!"):  # a YAML anchor, alias or tag would eat or fail on the text: text
        return raw.strip()
    value = _parse_yaml(raw)
    if isinstance(value, (dict, list)) and not _is_flow(value, raw):
        return raw.strip()
    return value


# Recipe keys holding a path (or a sqlite:/// URI) of the local file system: a leading `~` (or `~user`) is expanded
# when the recipe is loaded, so every writer and reader uses the same folder (Lightning expands it for checkpoints
# only; the rest went to a folder literally named `~` in the working directory).
PATH_KEYS: tuple[str, ...] = (
    "output_dir",
    "init_from",
    "ckpt",
    "data.shards",
    "data.raw_root",
    "tracking.tracking_uri",
    "tracking.artifact_location",
    "model.path",
    "model.mask_decoder.checkpoint",
    "launcher.folder",
)
SQLITE_PREFIX = "sqlite:///"
FILE_PREFIX = "file://"


def expand_home(value: str) -> str:
    """`value` with a leading `~` / `~user` expanded, also after `sqlite:///` and `file://`; otherwise unchanged."""
    for prefix in (SQLITE_PREFIX, FILE_PREFIX, ""):
        if value.startswith(prefix + "~"):
            return prefix + os.path.expanduser(value[len(prefix) :])
    return value


def _raw_at(raw: Any, key: str) -> Any:
    """The value at dotted `key` (list items by index) of a plain container; None where there is none."""
    node = raw
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _check_interpolations(cfg: DictConfig) -> None:
    """Resolve every `${...}` of the composed recipe (file and command-line values alike) once, so that one naming
    a missing key fails here in one line, not in the middle of a run."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except (InterpolationResolutionError, GrammarParseError) as err:
        key = str(getattr(err, "full_key", "") or "?")
        written = _raw_at(OmegaConf.to_container(cfg, resolve=False), key)
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        if isinstance(err, InterpolationKeyError):
            reason += " (a ${...} names a key of the composed recipe, e.g. ${model.preset})"
        raise RecipeError(f"{key}={written!r} cannot be resolved: {reason}; {_LITERAL}") from None


def _expand_home(cfg: DictConfig) -> None:
    """Expand a leading `~` in the PATH_KEYS of a composed recipe (interpolations inside the value are kept)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key in PATH_KEYS:
        node = _raw_at(raw, key)
        if isinstance(node, str) and expand_home(node) != node:
            OmegaConf.update(cfg, key, expand_home(node), merge=False)


def _is_open_key(cfg: DictConfig, key: str) -> bool:
    """Whether `key` exists, or is a new key of a free mapping (`launcher.additional.mail-type`, a dict-typed field)."""
    if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT:
        return True
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else None
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _set_override(cfg: DictConfig, key: str, raw: str) -> None:
    """Set `key` to the command-line value `raw` (parse_value); raises OmegaConf's errors for the caller to word."""
    try:
        value = parse_value(raw)
    except RecipeError as err:
        raise RecipeError(f"key {key!r}: {err}") from None
    if not _is_open_key(cfg, key):
        raise ConfigKeyError(key)
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except ValidationError as err:
        target = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if isinstance(target, DictConfig) and isinstance(value, str):  # `a: b` without braces stays text
            reason = str(getattr(err, "msg", err)).splitlines()[0]
            raise RecipeError(
                f"key {key!r} takes a mapping, got the text {value!r} ({reason}); write it in braces: {key}={{{value}}}"
            ) from None
        raise


def _merge_checked(schema: DictConfig, layer: DictConfig | list[str], where: str) -> DictConfig:
    """`schema` with `layer` (a config, or `key=value` overrides) merged in; schema violations become RecipeError."""
    key: Any = "?"
    try:
        if not isinstance(layer, list):
            return OmegaConf.merge(schema, layer)
        cfg = schema.copy()
        for item in layer:
            key, raw = item.split("=", 1)
            _set_override(cfg, key, raw)
        return cfg
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or (key if key != "?" else str(err))
        valid = _valid_keys(schema, key)
        raise RecipeError(f"{where}: unknown key {key!r}; valid keys here: {', '.join(valid)}") from None
    except (ValidationError, ConfigTypeError) as err:
        key = getattr(err, "full_key", None) or key
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise RecipeError(f"{where}: key {key!r} has a value of the wrong type or shape ({reason})") from None
    except GrammarParseError as err:
        key = getattr(err, "full_key", None) or key
        reason = str(getattr(err, "msg", err)).splitlines()[0]
        raise RecipeError(f"{where}: key {key!r} holds no valid interpolation ({reason}); {_LITERAL}") from None


# numeric keys a run cannot use outside these bounds: (key, lowest allowed, first value too high or None, what the
# error says is expected)
RANGES: tuple[tuple[str, float, float | None, str], ...] = (
    ("seed", 0, 2**32, "an integer from 0 to 2**32 - 1 = 4294967295"),  # numpy's seed range (Lightning seeds it)
    ("data.batch_size", 1, None, "an integer >= 1"),
    ("data.global_batch_size", 1, None, "null or an integer >= 1"),
    ("data.val_batch_size", 1, None, "an integer >= 1"),
    ("data.num_frames", 1, None, "an integer >= 1"),
    ("data.num_workers", 0, None, "an integer >= 0"),
    ("data.max_tokens", 1, None, "an integer >= 1"),
    ("data.max_redraws", 0, None, "an integer >= 0"),
    ("data.val_samples", 1, None, "null or an integer >= 1"),
    ("trainer.accumulate_grad_batches", 1, None, "an integer >= 1"),
    ("trainer.num_nodes", 1, None, "an integer >= 1"),
    ("trainer.keep_checkpoints", 1, None, "an integer >= 1"),
    ("trainer.checkpoint_every_n_steps", 1, None, "null or an integer >= 1"),
    ("trainer.cpu_threads", 1, None, "null or an integer >= 1"),
    ("optim.lr", 0, None, "a learning rate >= 0"),
    ("optim.decoder_lr", 0, None, "a learning rate >= 0"),
    ("optim.backbone_lr", 0, None, "null or a learning rate >= 0"),
    ("optim.weight_decay", 0, None, "a value >= 0"),
    # 1 would leave no step after the warm-up for the cosine decay (pixelqa.train.schedule.warmup_steps)
    ("optim.warmup_ratio", 0, 1, "a fraction in [0, 1)"),
    # 0 scores nothing; < 0 slices from the end
    ("eval.max_samples", 1, None, "null (every sample) or an integer >= 1"),
)

# Lightning reads a float trainer.val_check_interval as a fraction of an epoch, which a run on an endless stream
# does not have; 0 meant "only at the end" without saying so, which null says.
VAL_CHECK_INTERVAL_EXPECTED = (
    "expected null (validate once, at the end of the run) or an integer >= 1 (optimizer steps between validations)"
)

# Values a key once listed in CHOICES that no run can use: refused with this advice (not a traceback at the first step).
REFUSED_CHOICES: dict[str, dict[Any, str]] = {
    "trainer.precision": {
        "bf16-true": (
            "it casts the whole model to bfloat16, but UniPixel keeps SAM and its new modules in float32 (the first "
            "step fails); set the LLM's dtype with model.dtype=bfloat16 and use trainer.precision=bf16-mixed"
        ),
    },
}


def _non_finite(node: Any, key: str = "") -> tuple[str, float] | None:
    """The first (dotted key, value) of a plain recipe container whose number is NaN or infinite."""
    if isinstance(node, float):
        return None if math.isfinite(node) else (key, node)
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def _check_ranges(cfg: DictConfig) -> None:
    # NaN passes every comparison below (all are False) and an infinite rate trains to NaN: no setting takes either
    bad = _non_finite(OmegaConf.to_container(cfg, resolve=True))
    if bad is not None:
        raise RecipeError(f"{bad[0]}={bad[1]!r}: expected a finite number")
    for key, low, high, expected in RANGES:
        value = OmegaConf.select(cfg, key)
        if value is not None and (value < low or (high is not None and value >= high)):
            raise RecipeError(f"{key}={value!r} is out of range; expected {expected}")
    interval = OmegaConf.select(cfg, "trainer.val_check_interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
        raise RecipeError(f"trainer.val_check_interval={interval!r}: {VAL_CHECK_INTERVAL_EXPECTED}")


def load_recipe(args: list[str] | None = None, default: str = "stage3") -> DictConfig:
    """Compose and check a recipe from command-line style arguments (`recipe=stage3 model=tiny a.b=1`).

    Layers merge in the order of the recipe's `defaults:` list, where `_self_` stands for the recipe body:
    presets listed after `_self_` override the body (the stage recipes use this so that the tiny/synthetic demo
    presets override the paper-scale settings, which apply as soon as a paper-scale preset is chosen). A preset is
    looked up beside the recipe file, then in the package's recipes folder; `${...}` are resolved (checked) last.
    """
    found: list[Path] = []

    def root() -> Path:  # looked up when needed: a recipe given as a file without presets needs no recipes folder
        if not found:
            found.append(recipes_dir())
        return found[0]

    recipe, groups, dotlist = _split_args(list(args or []))
    path = _recipe_path(recipe or default, root)
    body = _read_yaml(path, f"recipe={recipe or default}")
    order = _defaults_of(body, f"recipe {path.name}")
    listed = {g for g, _ in order}
    order = [(g, groups.get(g, n)) for g, n in order] + [(g, n) for g, n in groups.items() if g not in listed]
    cfg = OmegaConf.structured(Recipe)
    cfg.name = path.stem
    cfg.model.seed = MODEL_SEED_DEFAULT  # one seed, one replicate (a preset or model.seed=N may pin it)
    for group, name in order:
        if group == "_self_":
            cfg = _merge_checked(cfg, body, f"recipe {path.name}")
        else:
            preset = _load_preset(group, name, path.parent, root)
            layer = preset if group in ROOT_GROUPS else OmegaConf.create({group: preset})
            cfg = _merge_checked(cfg, layer, f"{group}={name}")
    cfg = _merge_checked(cfg, dotlist, "command line")
    _expand_home(cfg)
    _check_interpolations(cfg)
    _check_choices(cfg)
    _check_ranges(cfg)
    cfg.presets = {g: n for g, n in order if g != "_self_"}
    try:
        _RECIPE_SOURCES[str(cfg.name)] = path
    except OmegaConfBaseException:  # a name that does not resolve fails later, where the recipe is used
        pass
    return cfg


def to_object(cfg: DictConfig) -> Recipe:
    """The recipe as a typed `Recipe` dataclass instance (interpolations resolved)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def print_config(cfg: DictConfig) -> str:
    """The resolved recipe as YAML (returned, and printed to stdout)."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    print(text, end="")
    return text


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """The recipe as flat `a.b.c -> value` pairs (for MLflow params)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        else:
            flat[key] = node

    walk(container, prefix)
    return flat


def run_cli(run: Callable[[list[str]], Any], doc: str | None, argv: list[str] | None = None) -> None:
    """Shared entry of the recipe CLIs (fit, evaluate): `-h` prints `doc`, a RecipeError exits 2 with its message."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(doc)
        return
    args = ["data.strict=true" if a == "--strict" else a for a in args]  # the flag spelling of data.strict
    args = ["trust_checkpoint=true" if a == "--trust-checkpoint" else a for a in args]  # as predict spells it
    from pixelqa.data.shard_reader import ShardDamageError

    try:
        run(args)
    except RecipeError as err:
        print(f"recipe error: {err}", file=sys.stderr)
        sys.exit(2)
    except ShardDamageError as err:  # --strict met damage, or shards hold nothing intact: the data, not the code
        print(f"data error: {damage_line(err)}", file=sys.stderr)
        sys.exit(2)


def damage_line(err: BaseException) -> str:
    """One line of a ShardDamageError, also when a DataLoader worker raised it (its message then holds the worker's
    whole traceback, the error's own line last)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.split("ShardDamageError: ", 1)[-1]
