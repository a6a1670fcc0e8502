"""The released UniPixel checkpoint format: read a folder directly, map its names to ours, write it back.

A released folder (PolyU-ChenLab/UniPixel-3B / -7B) holds `config.json` with `model_type: pixel_qwen2_5_vl` (the
Qwen2.5-VL keys flat at the top level plus `text_config` / `vision_config` and UniPixel's `sam2_*` and token-id
fields), `model.safetensors` or shards with `model.safetensors.index.json`, and the tokenizer / processor files.
Tensor names are transformers 4.x Qwen names (`model.layers.*`, `model.embed_tokens`, `model.norm`, `visual.*`,
`lm_head.weight` only when untied) and UniPixel's modules (`seg_head`, `msk_proj`, `ref_encoder`, `ref_proj*`,
`tem_*`, `sam2.*` with the memory fuser's `gamma` saved as `weight`). A plain Qwen2.5-VL-Instruct folder
(`model_type: qwen2_5_vl`) is read the same way as the base for training from scratch.

The config is built from the JSON dict: transformers 5.x `from_pretrained(folder)` misreads this config silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pixelqa.switches import RELEASED_SETTINGS, SWITCH_CHOICES, release_value

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    from pixelqa.model.config import UniPixelConfig

RELEASE_TYPE = "pixel_qwen2_5_vl"
BASE_TYPE = "qwen2_5_vl"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# UniPixel module prefixes of the release -> ours (inside UniPixel)
MODULE_PREFIXES = {
    "seg_head.": "l2m.mlp.",
    "msk_proj.": "m2l.mlp.",
    "ref_encoder.": "sparse_prompt_encoder.ref_encoder.",
    "ref_proj_single.": "sparse_prompt_encoder.ref_proj_single.",
    "ref_proj_double.": "sparse_prompt_encoder.ref_proj_double.",
    "ref_proj.": "sparse_prompt_encoder.ref_proj.",
    "tem_pe.": "sparse_prompt_encoder.tem_pe.",
    "tem_emb.": "sparse_prompt_encoder.tem_emb.",
    "tem_proj.": "sparse_prompt_encoder.tem_proj.",
    "sam2.": "mask_decoder.sam.",
}
SAM_ARCHS = {
    "configs/sam2.1_hiera_b+": "hiera_b+",
    "configs/sam2.1_hiera_t": "hiera_t",
    "configs/sam2.1_hiera_s": "hiera_s",
    "configs/sam2.1_hiera_l": "hiera_l",
    "configs/sam2.1_hiera_micro": "micro",
}
TOKEN_KEYS = {"ref_token_id": "<|ref|>", "seg_token_id": "<|seg|>", "mem_token_id": "<|mem|>"}


class ReleaseError(ValueError):
    """A model folder that cannot be read: names the file and the key."""


@dataclass
class ModelFolder:
    """A local model folder as found on disk."""

    kind: str  # "release" | "base"
    root: Path
    config: dict
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor name -> file name (empty: config only)

    def file(self, name: str) -> Path:
        """Path of a file in the folder."""
        return self.root / name


def read_json_object(path: Path) -> dict:
    """A JSON file of a model folder that must hold an object, with one clear error when it does not."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ReleaseError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def read_config(root: Path) -> dict:
    """config.json of a folder, with a clear error when missing, not JSON or not an object."""
    path = root / "config.json"
    if not path.is_file():
        raise ReleaseError(f"{path}: missing; a model folder needs config.json (nothing is fetched from the hub)")
    return read_json_object(path)


# Keys of a folder's JSON files by which transformers' Auto* classes import and run Python files of the folder
# (after its "Do you wish to run the custom code?" prompt). A released or base folder never has them: a folder that
# does is refused up front, so no prompt is shown and nothing of the folder is imported.
CODE_KEYS = ("auto_map",)


def code_config_files(root: Path) -> list[Path]:
    """The folder's JSON files that transformers reads for classes: config, tokenizer and processor configs."""
    named = [root / "config.json", root / "tokenizer_config.json"]
    processors = sorted(p for p in root.glob("*processor_config.json") if p.is_file())
    return [p for p in named if p.is_file()] + processors


def _find_key(data: Any, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """(dotted key, value) of one of `keys` anywhere in a JSON value (iterative: no recursion limit)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in keys:
                    return f"{prefix}{k}", v
                stack.append((f"{prefix}{k}.", v))
        elif isinstance(node, list):
            stack.extend((f"{prefix}{i}.", v) for i, v in enumerate(node))
    return None


def check_no_custom_code(root: Path) -> None:
    """Refuse a folder whose configs name custom code (`auto_map`): never imported, never asked about."""
    for path in code_config_files(root):
        found = _find_key(read_json_object(path), CODE_KEYS)
        if found is not None:
            key, value = found
            raise ReleaseError(
                f"{path}: {key}={_short(value)} names custom code, which PixelQA never runs; refused (expected a "
                "released UniPixel or Qwen2.5-VL folder, read with transformers' own classes)"
            )


def _short(value: Any, limit: int = 120) -> str:
    """repr of a value read from a file, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    """The first lines of an exception's message, joined (transformers' and jinja's run over several lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """`safe_open` of one weight file; a truncated or damaged file is a ReleaseError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as exc:
        raise ReleaseError(f"{path}: not a readable safetensors file ({exc}); expected a complete download") from None


def _plain_file_name(name: Any) -> bool:
    """A bare file name (no folder part, not `.` / `..`, not absolute): a file directly inside the model folder."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and Path(name).name == name
    )


def weight_map(root: Path) -> dict[str, str]:
    """Tensor name -> safetensors file, from the shard index or the single file (checked to exist).

    The index may only name plain file names: every shard is a file of this folder, never one elsewhere.
    """
    index = root / INDEX_FILE
    if index.is_file():
        mapping = read_json_object(index).get("weight_map")
        if not isinstance(mapping, dict):
            raise ReleaseError(
                f"{index}: weight_map={_short(mapping)}; expected an object mapping tensor names to shard file names"
            )
        for key, name in mapping.items():
            if not _plain_file_name(name):
                raise ReleaseError(
                    f"{index}: weight_map[{key!r}]={_short(name)}; expected the plain file name of a shard in this "
                    "folder (no folder part)"
                )
        for name in sorted(set(mapping.values())):
            if not (root / name).is_file():
                key = next(k for k, v in mapping.items() if v == name)
                raise ReleaseError(f"{index}: shard {name!r} (holding {key!r}) is missing from {root}")
        return dict(mapping)
    single = root / SINGLE_FILE
    if single.is_file():
        with open_safetensors(single) as f:
            return {k: SINGLE_FILE for k in f.keys()}
    return {}


def inspect_folder(preset: str, path: str | None) -> ModelFolder | None:
    """The kind of the folder a model config names (None for the tiny preset without a path)."""
    if path is None:
        return None
    root = Path(path)
    if not root.is_dir():
        raise ReleaseError(f"model.path: {path!r} is not a local directory (preset={preset!r})")
    config = read_config(root)
    check_no_custom_code(root)
    model_type = config.get("model_type")
    if model_type == RELEASE_TYPE:
        kind = "release"
    elif model_type == BASE_TYPE:
        kind = "base"
    else:
        raise ReleaseError(
            f"{root / 'config.json'}: model_type={model_type!r}; expected {RELEASE_TYPE!r} (a released UniPixel) "
            f"or {BASE_TYPE!r} (a Qwen2.5-VL base)"
        )
    check_qwen_config(root, config)
    mapping = weight_map(root)
    if kind == "release" and not mapping:
        raise ReleaseError(f"{root}: a released UniPixel folder without {SINGLE_FILE} or {INDEX_FILE}")
    return ModelFolder(kind, root, config, mapping)


def qwen_config(config: dict, attn: str = "sdpa") -> Qwen2_5_VLConfig:
    """A transformers `Qwen2_5_VLConfig` built from a config.json dict (release or base)."""
    from transformers import Qwen2_5_VLConfig

    keep = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    # the release omits tie_word_embeddings when true (3B) and writes false with an lm_head (7B)
    keep["tie_word_embeddings"] = bool(config.get("tie_word_embeddings", True))
    cfg = Qwen2_5_VLConfig(**keep)
    cfg._attn_implementation = attn
    return cfg


def check_qwen_config(root: Path, config: dict) -> None:
    """The Qwen config is built from this dict later: a value of the wrong type is named here, with its file."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        qwen_config(config)
    except (StrictDataclassError, TypeError, ValueError, AttributeError) as exc:
        raise ReleaseError(f"{root / 'config.json'}: {_first_line(exc)}; expected a Qwen2.5-VL config") from None


def qwen_key(name: str) -> str | None:
    """Our transformers-5 Qwen name of a checkpoint tensor (old or new naming); None for UniPixel modules."""
    if name.startswith("model.language_model.") or name.startswith("model.visual."):
        return name
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    if name.startswith("visual."):
        return "model." + name
    if name == "lm_head.weight":
        return name
    return None


def _translate(name: str, prefixes: list[tuple[str, str]], to_release: bool) -> str | None:
    """`name` with its module prefix swapped by `prefixes` (source -> target), SAM's fuser scale renamed."""
    for source, target in prefixes:
        if name.startswith(source):
            rest = name[len(source) :]
            if "sam2." in (source, target):
                rest = _fuser_name(rest, to_release)
            return target + rest
    return None


def release_key(ours: str) -> str | None:
    """The released name of one of our UniPixel module tensors (None if it has no released counterpart)."""
    return _translate(ours, [(mine, theirs) for theirs, mine in MODULE_PREFIXES.items()], to_release=True)


def our_key(theirs: str) -> str | None:
    """Our UniPixel name of a released module tensor (None for Qwen tensors)."""
    return _translate(theirs, list(MODULE_PREFIXES.items()), to_release=False)


def _fuser_name(name: str, to_release: bool) -> str:
    """SAM's memory-fuser scale: `gamma` in sam2, `weight` in the release."""
    if name.startswith("memory_encoder.fuser.layers."):
        if to_release and name.endswith(".gamma"):
            return name[: -len("gamma")] + "weight"
        if not to_release and name.endswith(".weight") and name.count(".") == 4:
            return name[: -len("weight")] + "gamma"
    return name


def read_tensors(folder: ModelFolder, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, file by file (one open per shard)."""
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(folder.weight_map[n], []).append(n)
    out = {}
    for fname, keys in by_file.items():
        with open_safetensors(folder.file(fname)) as f:
            for k in keys:
                out[k] = f.get_tensor(k)
    return out


def _copy_into(params: dict[str, torch.Tensor], tensors: dict[str, tuple[str, torch.Tensor]], folder: ModelFolder):
    """Copy checkpoint tensors into our parameters/buffers, checking every shape against ours."""
    with torch.no_grad():
        for ours, (theirs, value) in tensors.items():
            target = params[ours]
            if tuple(target.shape) != tuple(value.shape):
                raise ReleaseError(
                    f"{folder.file(folder.weight_map[theirs])}: {theirs!r} has shape {tuple(value.shape)}, the model "
                    f"built from {folder.file('config.json')} expects {tuple(target.shape)}"
                )
            target.copy_(value.to(target.dtype))


def load_qwen_weights(qwen: nn.Module, folder: ModelFolder) -> None:
    """Load the Qwen part of a release / base folder into a freshly built transformers model (strict)."""
    params = dict(qwen.state_dict(keep_vars=True))
    names = [n for n in folder.weight_map if qwen_key(n) is not None]
    tied = qwen.get_output_embeddings().weight is qwen.get_input_embeddings().weight
    wanted = {}
    for n in names:
        ours = qwen_key(n)
        if ours not in params:
            raise ReleaseError(f"{folder.file(folder.weight_map[n])}: unexpected tensor {n!r} for this config")
        if tied and ours == "lm_head.weight":
            continue  # tied: the embedding matrix is the head
        wanted[ours] = n
    expected = {k for k in params if not (tied and k == "lm_head.weight")}
    missing = sorted(expected - set(wanted))
    if missing:
        where = folder.file(INDEX_FILE if (folder.root / INDEX_FILE).is_file() else SINGLE_FILE)
        raise ReleaseError(f"{where}: no entry for {missing[0]!r} (and {len(missing) - 1} more) of the Qwen model")
    loaded = read_tensors(folder, list(wanted.values()))
    _copy_into(params, {ours: (n, loaded[n]) for ours, n in wanted.items()}, folder)


def apply_release_config(cfg: UniPixelConfig, folder: ModelFolder) -> None:
    """Set what the release fixes (SAM arch / size, hidden tokens, released blocks) on a UniPixelConfig."""
    c = folder.config
    where = folder.file("config.json")
    sam_config = c.get("sam2_config")
    if sam_config not in SAM_ARCHS:
        raise ReleaseError(f"{where}: sam2_config={sam_config!r}; expected one of {sorted(SAM_ARCHS)}")
    cfg.mask_decoder.arch = SAM_ARCHS[sam_config]
    cfg.mask_decoder.image_size = _stored_int(folder, "sam2_image_size", 1024, SAM_IMAGE_SIZES)
    batch_mode = c.get("sam2_batch_mode", False)
    if not isinstance(batch_mode, bool) and batch_mode is not None:
        raise ReleaseError(f"{where}: sam2_batch_mode={_short(batch_mode)}; expected true or false")
    cfg.mask_decoder.mode = "independent" if batch_mode else "propagate"
    cfg.mask_decoder.checkpoint = None  # SAM's weights are in the release
    cfg.hidden_tokens = _stored_int(folder, "sam2_hidden_tokens", 2, HIDDEN_TOKENS)
    # the released blocks, whatever the preset says: our corrections are off when loading a release. Derived from
    # the switch table, so a new switch value is reset too unless switches.RELEASE_KEEPS lists it (the rule's doc)
    for key in SWITCH_CHOICES:
        _set_key(cfg, key, release_value(key, attrgetter(key)(cfg)))
    for key, value in RELEASED_SETTINGS.items():
        _set_key(cfg, key, value)


# what a release's stored integers may be: (lowest, highest, multiple of) -- SAM works on 16-pixel patches
SAM_IMAGE_SIZES = (16, 4096, 16)
HIDDEN_TOKENS = (1, 64, 1)


def _stored_int(folder: ModelFolder, key: str, default: int, bounds: tuple[int, int, int]) -> int:
    """An integer of config.json, checked for type and range; the error names the file, the key and the value."""
    value = folder.config.get(key, default)
    low, high, step = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % step:
        every = f", a multiple of {step}" if step > 1 else ""
        raise ReleaseError(
            f"{folder.file('config.json')}: {key}={_short(value)}; expected an integer from {low} to {high}{every}"
        )
    return value


def _set_key(cfg: UniPixelConfig, key: str, value: Any) -> None:
    """Set a dotted config key (`memory.pooling`) on a UniPixelConfig."""
    *path, leaf = key.split(".")
    setattr(attrgetter(".".join(path))(cfg) if path else cfg, leaf, value)


def release_overrides(cfg: UniPixelConfig, folder: ModelFolder) -> dict[str, tuple[Any, Any]]:
    """`key -> (yours, released)` for each `cfg` setting (keys below `model.`) that `apply_release_config` changes."""
    import copy
    from dataclasses import asdict

    applied = copy.deepcopy(cfg)
    apply_release_config(applied, folder)

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    before, after = flat(asdict(cfg)), flat(asdict(applied))
    return {k: (before[k], after[k]) for k in after if before.get(k) != after[k]}


def check_token_ids(folder: ModelFolder, token_ids: dict[str, int]) -> None:
    """The tokenizer's ids of the three tokens must be the ones the release's config records."""
    for key, token in TOKEN_KEYS.items():
        want = folder.config.get(key)
        if want is None:
            raise ReleaseError(f"{folder.file('config.json')}: missing {key!r} (the id of {token})")
        if isinstance(want, bool) or not isinstance(want, int):
            raise ReleaseError(
                f"{folder.file('config.json')}: {key}={_short(want)}; expected the integer id of {token}"
            )
        if token_ids.get(token) != want:
            raise ReleaseError(
                f"{folder.file('config.json')}: {key}={want} but the folder's tokenizer maps {token} to "
                f"{token_ids.get(token)}; tokenizer and weights do not belong together"
            )


def load_release_modules(model: nn.Module, folder: ModelFolder) -> None:
    """Load a release's UniPixel modules (seg_head, msk_proj, ref_*, tem_*, sam2) into our UniPixel (strict)."""
    params = dict(model.state_dict(keep_vars=True))
    wanted: dict[str, str] = {}
    for theirs in folder.weight_map:
        if qwen_key(theirs) is not None:
            continue
        ours = our_key(theirs)
        if ours is None or ours not in params:
            raise ReleaseError(
                f"{folder.file(folder.weight_map[theirs])}: unexpected tensor {theirs!r} (not a UniPixel module of "
                f"this build: seg_head={model.cfg.seg_head}, prompt_encoder.kind={model.cfg.prompt_encoder.kind})"
            )
        wanted[ours] = theirs
    expected = [k for k in params if release_key(k) is not None]
    missing = [k for k in expected if k not in wanted]
    if missing:
        raise ReleaseError(
            f"{folder.root}: no tensor {release_key(missing[0])!r} (and {len(missing) - 1} more) "
            "in the released weights"
        )
    loaded = read_tensors(folder, list(wanted.values()))
    _copy_into(params, {ours: (t, loaded[t]) for ours, t in wanted.items()}, folder)


def build_processor(folder: ModelFolder) -> Qwen2_5_VLProcessor:
    """The Qwen2.5-VL processor of a folder, built from its parts (AutoProcessor returns only the tokenizer here).

    Resizing is switched on (the release saves do_resize=false because its loader resizes frames beforehand), so
    media of any size enter within the folder's pixel budget. Nothing of the folder is run: transformers' own
    classes only (`trust_remote_code=False`; a folder naming custom code is refused by `inspect_folder`), and the
    chat template, rendered in transformers' sandbox, is tried once here so that a broken one is named now.
    """
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    root = folder.root
    check_no_custom_code(root)  # also for a ModelFolder not made by inspect_folder
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        if not (root / name).is_file():
            raise ReleaseError(f"{root / name}: missing; the folder's tokenizer and processor are needed")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001  (tokenizers / transformers raise many types for a damaged file)
        raise ReleaseError(
            f"{root}: the folder's tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja) cannot "
            f"be read ({_first_line(exc)}); expected those of a Qwen2.5-VL folder"
        ) from None
    # the release's tokenizer config carries do_resize=false (its loader resized frames beforehand); a processor
    # merges tokenizer settings into every media call, which would switch resizing off for any input
    tokenizer.init_kwargs.pop("do_resize", None)
    # the explicit processor classes below import nothing named by the folder; trust_remote_code=False all the same
    try:
        image_processor = Qwen2VLImageProcessor.from_pretrained(
            str(root), local_files_only=True, trust_remote_code=False, do_resize=True
        )
    except Exception as exc:  # noqa: BLE001
        raise ReleaseError(f"{root / 'preprocessor_config.json'}: {_first_line(exc)}") from None
    # the per-frame budget is the whole rule, as in the released loader: qwen-vl-utils' cap on a whole video's pixels
    # (transformers' cap_pixels_per_frame) only binds past thousands of frames at these budgets
    if (root / "video_preprocessor_config.json").is_file():
        try:
            video_processor = Qwen2VLVideoProcessor.from_pretrained(
                str(root), local_files_only=True, trust_remote_code=False, do_resize=True, cap_pixels_per_frame=False
            )
        except Exception as exc:  # noqa: BLE001
            raise ReleaseError(f"{root / 'video_preprocessor_config.json'}: {_first_line(exc)}") from None
    else:
        # frames of a video are cut and normalised as the folder's images are (transformers' defaults otherwise)
        shared = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor")
        video_processor = Qwen2VLVideoProcessor(
            size=dict(image_processor.size),
            do_sample_frames=False,
            cap_pixels_per_frame=False,
            **{name: getattr(image_processor, name) for name in shared},
        )
    vision = folder.config.get("vision_config")
    vision = vision if isinstance(vision, dict) else {}
    check_processor_values(image_processor, root / "preprocessor_config.json", vision)
    video_file = root / "video_preprocessor_config.json"
    check_processor_values(
        video_processor, video_file if video_file.is_file() else root / "preprocessor_config.json", vision
    )
    template_file = root / "chat_template.jinja"
    where = template_file if template_file.is_file() else root / "tokenizer_config.json"
    try:
        template = template_file.read_text() if template_file.is_file() else getattr(tokenizer, "chat_template", None)
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{template_file}: cannot be read as text ({_first_line(exc)})") from None
    if template is None:
        raise ReleaseError(f"{template_file}: missing, and the tokenizer has no chat template either")
    if not isinstance(template, str):
        raise ReleaseError(f"{where}: chat_template={_short(template)}; expected one Jinja template (a string)")
    tokenizer.chat_template = template
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=template
    )
    check_chat_template(processor, where)
    return processor


# processor value -> the vision config's key it must equal (the ViT cuts patches and merges tokens with these)
PROCESSOR_GEOMETRY = {
    "patch_size": "patch_size",
    "merge_size": "spatial_merge_size",
    "temporal_patch_size": "temporal_patch_size",
}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_processor_values(proc: Any, where: Path, vision: dict) -> None:
    """ReleaseError naming the first value of an image / video processor config a Qwen2.5-VL processor cannot use.

    transformers loads any JSON value into these attributes; a string or a float, or a patch geometry the folder's
    ViT does not have, would otherwise fail at the first media (a traceback) or cut frames into wrong tokens.
    """

    def bad(name: str, expected: str) -> ReleaseError:
        return ReleaseError(f"{where}: {name}={_short(getattr(proc, name, None))}; expected {expected}")

    for name, vision_key in PROCESSOR_GEOMETRY.items():
        value = getattr(proc, name, None)
        if not _positive_int(value):
            raise bad(name, "a positive integer")
        want = vision.get(vision_key)
        if _positive_int(want) and value != want:
            raise bad(name, f"{want}, the config.json vision_config.{vision_key} the ViT is built with")
    for name in ("image_mean", "image_std"):
        value = getattr(proc, name, None)
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_number(v) for v in value)):
            raise bad(name, "3 numbers (one per RGB channel)")
    if not all(v > 0 for v in proc.image_std):
        raise bad("image_std", "3 positive numbers")
    if not (_number(proc.rescale_factor) and proc.rescale_factor > 0):
        raise bad("rescale_factor", "a positive number (1/255 for 8-bit frames)")
    size = getattr(proc, "size", None)  # a dict, or transformers' SizeDict (attributes)
    lo, hi = (
        size.get(k) if isinstance(size, dict) else getattr(size, k, None) for k in ("shortest_edge", "longest_edge")
    )
    if not (_positive_int(lo) and _positive_int(hi) and lo <= hi):
        raise ReleaseError(
            f"{where}: size shortest_edge={_short(lo)}, longest_edge={_short(hi)} (min_pixels / max_pixels); "
            "expected positive integers, shortest_edge <= longest_edge"
        )


# The conversations our code renders (pixelqa.model.chat, pixelqa.data.collate): media in the first user message,
# then text turns. A template that fails on these would fail on the first question.
TRIAL_CONVERSATIONS = [
    [
        {"role": "user", "content": [{"type": kind}, {"type": "text", "text": "What is <|ref|> doing?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is <|seg|> running."}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    for kind in ("image", "video")
]


def check_chat_template(processor: Qwen2_5_VLProcessor, where: Path) -> None:
    """Render the chat template on the trial conversations; a template that cannot render is one ReleaseError.

    transformers renders templates in Jinja's sandbox, so an attempt to reach Python objects raises SecurityError
    (a TemplateError) rather than running anything: that, a syntax error or a failing expression is named here.
    """
    for messages in TRIAL_CONVERSATIONS:
        for last in range(1, len(messages) + 1):
            try:
                text = processor.apply_chat_template(
                    messages[:last], tokenize=False, add_generation_prompt=last % 2 == 1
                )
            except Exception as exc:  # noqa: BLE001  (jinja2.TemplateError, or any error the template's code raises)
                raise ReleaseError(
                    f"{where}: the chat template cannot be rendered ({type(exc).__name__}: {_first_line(exc)}); "
                    "expected a Qwen2.5-VL chat template"
                ) from None
            if not isinstance(text, str):
                raise ReleaseError(f"{where}: the chat template renders {type(text).__name__}; expected text")
