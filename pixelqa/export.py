"""Write a PixelQA model in the released UniPixel format: `python -m pixelqa.export CKPT OUT [--dtype bfloat16]`.

CKPT is a Lightning checkpoint of `pixelqa.fit` (or its run folder), a `save_pretrained` folder, or a released
folder. OUT gets `config.json` (model_type pixel_qwen2_5_vl), `model.safetensors` (LoRA merged, Qwen tensors under
the transformers-4 names the release uses, our new-token rows written into the embedding / LM-head rows, SAM's
fuser scale saved as `weight`) and the tokenizer / processor files, so `model=unipixel-3b model.path=OUT` (and the
official builder) read it back. The write is atomic (a temporary folder renamed into place); OUT must be a new
name or an empty folder, or with `--overwrite` an earlier export (a folder holding only `EXPORT_FILES`, the names an
export, the release or `save_pretrained` write), which is replaced whole. A folder holding anything else is
refused, and so are, always, the root folder, the home folder, the current folder and any folder holding one of
them, and a folder that holds the model being exported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelqa.model import release

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

TEXT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "max_position_embeddings",
    "vocab_size",
    "hidden_act",
    "attention_dropout",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The names in an earlier export that `--overwrite` may replace: what `export` writes (config.json, the weights, the
# tokenizer / processor files and the chat template; older transformers add the vocab, merges and special-token
# files), what the released folders hold beside them (generation config, sharded weights and their index), and a
# `save_pretrained` folder's two files. Anything else in OUT is someone's data: refused.
EXPORT_FILES = (
    "config.json",
    release.SINGLE_FILE,
    release.INDEX_FILE,
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "unipixel_config.json",  # pixelqa.model.unipixel.CONFIG_FILE / WEIGHTS_FILE (save_pretrained), without importing
    "unipixel.pt",  # the model stack before the model loads
)
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
SHOWN_ENTRIES = 3  # foreign entries a refusal names


def load_any(path: str | Path, trust: bool = False) -> UniPixel:
    """A UniPixel from a released folder, a save_pretrained folder or a Lightning checkpoint (or its run folder);
    `trust` allows a checkpoint that needs full unpickling."""
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.unipixel import CONFIG_FILE, UniPixel

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        return UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(p)))
    if p.is_dir() and (p / CONFIG_FILE).is_file():  # its weights read as a Lightning checkpoint's: --trust-checkpoint
        from pixelqa.checkpoints import safe_torch_load

        hint = "Pass --trust-checkpoint"
        return UniPixel.from_pretrained(p, load_weights=lambda f: safe_torch_load(f, trust, what="ckpt", hint=hint))
    from pixelqa.eval.model_loading import literal, stored_model_config
    from pixelqa.train.module import model_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(p, trust, what="ckpt", hint="Pass --trust-checkpoint")
    model_cfg = stored_model_config(ckpt)  # as evaluate reads it: the model exported is the model trained
    if model_cfg is None:
        raise ValueError(f"ckpt: {str(p)!r} records no model config (hyper_parameters.model); not a PixelQA checkpoint")
    # plain data: a stored string reading `${...}` stays that text (the build merges it into a config)
    return model_from_checkpoint(literal(model_cfg), ckpt, str(p), stage=3)


def release_config(model: UniPixel, tied: bool, dtype: str) -> dict:
    """config.json of the released format for a model (Qwen keys flat + text/vision configs + UniPixel fields)."""
    qwen = model.qwen
    d = qwen.config.to_dict()
    text = d.get("text_config", {})
    for k in TEXT_KEYS:
        if k in text:
            d[k] = text[k]
    rope = dict(text.get("rope_parameters") or {})
    d["rope_theta"] = rope.get("rope_theta", d.get("rope_theta"))
    d["rope_scaling"] = {"mrope_section": rope.get("mrope_section"), "rope_type": "default", "type": "default"}
    for k in ("rope_parameters", "dtype", "transformers_version", "_name_or_path"):
        d.pop(k, None)
    arch_of = {v: k for k, v in release.SAM_ARCHS.items()}
    cfg = model.cfg
    d.update(
        model_type=release.RELEASE_TYPE,
        architectures=["PixelQwen2_5_VLForConditionalGeneration"],
        sam2_config=arch_of[cfg.mask_decoder.arch],
        sam2_image_size=cfg.mask_decoder.image_size,
        sam2_hidden_tokens=cfg.hidden_tokens,
        sam2_batch_mode=cfg.mask_decoder.mode == "independent",
        sam2_enable_decoder=True,
        sam2_inference_mode=False,
        sample_objects=cfg.loss.max_objects,
        base_model="qwen2_5_vl",
        torch_dtype=dtype,
        ref_token_id=model.token_ids["<|ref|>"],
        seg_token_id=model.token_ids["<|seg|>"],
        mem_token_id=model.token_ids["<|mem|>"],
    )
    if tied:
        d.pop("tie_word_embeddings", None)  # the release omits it when true
    else:
        d["tie_word_embeddings"] = False
    return d


@torch.no_grad()
def release_state_dict(model: UniPixel, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors under released names, tied) for a model; LoRA merged into a copy of the weights."""
    from peft import PeftModel

    for name, _ in model.named_parameters():
        if name.startswith("backbone.") or name in ("new_token_embed", "new_token_head"):
            continue
        if release.release_key(name) is None:
            raise ValueError(
                f"{name}: no released counterpart (seg_head={model.cfg.seg_head}, "
                f"prompt_encoder.kind={model.cfg.prompt_encoder.kind}); only the released structure can be exported"
            )
    backbone = model.backbone
    if isinstance(backbone, PeftModel):
        import copy

        backbone = copy.deepcopy(backbone).merge_and_unload()
    qwen_sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    embed = qwen_sd["model.language_model.embed_tokens.weight"]
    head = qwen_sd.get("lm_head.weight", embed).clone()
    ids = model.new_ids.cpu()
    embed[ids] = model.new_token_embed.detach().to(embed.dtype).cpu()
    head[ids] = model.new_token_head.detach().to(head.dtype).cpu()
    tied = bool(getattr(model.qwen.config, "tie_word_embeddings", False)) and torch.equal(head, embed)
    out: dict[str, torch.Tensor] = {}
    for k, v in qwen_sd.items():
        if k == "lm_head.weight":
            continue
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model.") :]] = v
        elif k.startswith("model.visual."):
            out[k[len("model.") :]] = v
    out["model.embed_tokens.weight"] = embed
    if not tied:
        out["lm_head.weight"] = head
    for k, v in model.state_dict().items():
        theirs = release.release_key(k)
        if theirs is not None:
            out[theirs] = v.detach().cpu()
    return {k: v.to(dtype).contiguous() for k, v in out.items()}, tied


def is_export_name(name: str) -> bool:
    """Whether a name in OUT is one an earlier export (or release, or save_pretrained) holds: `EXPORT_FILES`."""
    return name in EXPORT_FILES or _SHARD.fullmatch(name) is not None


def check_out(out: str | Path, overwrite: bool = False, source: str | Path | None = None) -> Path:
    """`out` as a folder export may write: a new name, an empty folder, or with `overwrite` an earlier export
    (replaced whole); never the root, home or current folder or one holding them, nor a folder holding `source`
    (the model being exported). Its parent folder must take new entries (tried, before a model loads for minutes
    only to fail at the write)."""
    from pixelqa.files import foreign_entries, refuse_protected, replaceable_folder

    target = Path(out)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"out: {str(target)!r} exists and is not a folder; expected a new folder name")
    refuse_protected(target, "out: ")
    if source is not None and holds_source(target, source):
        raise FileExistsError(
            f"out: {str(target)!r} holds the model being exported ({str(source)!r}); it is never replaced, choose a "
            "new folder for the output"
        )
    foreign = foreign_entries(target, is_export_name)
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:SHOWN_ENTRIES]) + (
            f" and {len(foreign) - SHOWN_ENTRIES} more" if len(foreign) > SHOWN_ENTRIES else ""
        )
        raise FileExistsError(
            f"out: {str(target)!r} is a folder that is not empty and holds what no export writes ({shown}); "
            "expected a new folder name, an empty folder or an earlier export (which --overwrite replaces)"
        )
    if not overwrite and not replaceable_folder(target):
        raise FileExistsError(
            f"out: {str(target)!r} is a folder that is not empty (an earlier export); expected a new folder name, "
            "or pass --overwrite to replace it"
        )
    check_writable(target.parent)
    return target


def holds_source(out: Path, source: str | Path) -> bool:
    """Whether the folder `out` holds (or is) the model `source` or a file it is read from: the path itself, the
    entries of a folder (a released folder's files, a run folder's `checkpoints/last.ckpt`), links followed."""
    if not out.is_dir():
        return False
    folder = Path(os.path.realpath(out))
    src = Path(source)
    paths = [src, src / "checkpoints" / "last.ckpt"]
    if src.is_dir():
        paths += list(src.iterdir())
    for path in paths:
        real = Path(os.path.realpath(path))
        if real == folder or folder in real.parents:
            return True
    return False


def check_writable(folder: Path) -> None:
    """Raise `OutError` unless a folder can be made in `folder` (or in its nearest existing ancestor, where the
    missing ones would be made): creating one and removing it again is the only test that also sees read-only
    mounts, quotas and network filesystems' own rules."""
    import tempfile

    from pixelqa.files import disk_error, temp_prefix

    probe_in = folder.absolute()
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutError(f"out: {str(probe_in)!r} is not a folder; expected the output folder's parent to be one")
    try:
        Path(tempfile.mkdtemp(prefix=temp_prefix(probe_in / "probe"), dir=probe_in)).rmdir()
    except OSError as exc:
        raise OutError(
            f"out: cannot write in {str(probe_in)!r} ({disk_error(exc) or exc.strerror}); choose a folder you can "
            "write to"
        ) from None


class OutError(ValueError):
    """An output folder export cannot write in."""


def export(
    model: UniPixel, out: str | Path, dtype: str = "float32", overwrite: bool = False, source: str | Path | None = None
) -> Path:
    """Write `model` to `out` in the released format, atomically; returns the folder. An existing non-empty `out`
    is replaced whole only with `overwrite`, and only when it is an earlier export (`check_out`; `source`, the path
    the model was read from, is never replaced)."""
    from safetensors.torch import save_file

    from pixelqa.files import FolderTaken, atomic_folder

    if dtype not in DTYPES:
        raise ValueError(f"--dtype: got {dtype!r}, expected one of {sorted(DTYPES)}")
    target = check_out(out, overwrite, source)
    # without --overwrite, a folder another export finished meanwhile is not replaced: FolderTaken, one line
    try:
        with atomic_folder(target, replace=overwrite) as tmp:
            tensors, tied = release_state_dict(model, DTYPES[dtype])
            save_file(tensors, str(tmp / release.SINGLE_FILE), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(release_config(model, tied, dtype), indent=2))
            # the parts one by one: the release keeps preprocessor_config.json and video_preprocessor_config.json
            model.processor.tokenizer.save_pretrained(str(tmp))
            model.processor.image_processor.save_pretrained(str(tmp))
            model.processor.video_processor.save_pretrained(str(tmp))
            template = model.processor.chat_template or model.tokenizer.chat_template
            if template:
                (tmp / "chat_template.jinja").write_text(template)
            if overwrite:  # checked again: what appeared there during the minutes of writing is not replaced either
                check_out(target, overwrite, source)
    except FolderTaken as exc:
        raise FolderTaken(f"out: {exc}; export to another folder, or pass --overwrite to replace it") from None
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 0 on success, 2 on a user error."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint / run folder, save_pretrained folder, or released folder")
    parser.add_argument(
        "out", help="output folder: a new name, an empty folder or (--overwrite) an earlier export; written atomically"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="saved dtype (release: bfloat16; default %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it holds an earlier export (only the files an export writes); a folder holding "
        "anything else, the root, home or current folder (or one holding them) and the model's own folder are "
        "always refused",
    )
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint needing full unpickling")
    args = parser.parse_args(argv)
    from pixelqa.quiet import silence_library_noise

    silence_library_noise()  # transformers' notes on a released config.json
    try:
        check_out(args.out, args.overwrite, args.ckpt)  # before the model loads (minutes at 7B)
        model = load_any(args.ckpt, args.trust_checkpoint)
        folder = export(model, args.out, args.dtype, overwrite=args.overwrite, source=args.ckpt)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full disk or a quota met while writing: said in one line, the old OUT intact
        from pixelqa.files import disk_error

        if disk_error(exc) is None:
            raise
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"error: {said}; {args.out} not written ({disk_error(exc)}; any earlier export there is intact)",
            file=sys.stderr,
        )
        return 2
    print(f"exported: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
