"""Loading a model for inference without running code from the file: released folders, save_pretrained folders and
Lightning checkpoints, bf16 on GPU and fp32 on CPU.

A released folder is read from safetensors and JSON with transformers' own classes (a folder whose configs name
custom code, `auto_map`, is refused: `release.inspect_folder`); `--trust-checkpoint` has no say there, since no
unpickling is involved. A `save_pretrained` folder (`UniPixel.from_pretrained`) and a Lightning checkpoint are read
by `pixelqa.checkpoints.safe_torch_load` (`torch.load(weights_only=True)` with the few extra types our checkpoints
may hold allow-listed). A file that needs anything else is refused with a message naming those types, unless the
user trusts it (`--trust-checkpoint`, for both formats alike: plain `torch.load`, which can run code).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pixelqa import checkpoints
from pixelqa.checkpoints import ALLOWED_GLOBALS
from pixelqa.predict.errors import PredictInputError

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel

__all__ = ["ALLOWED_GLOBALS", "TINY", "build_tiny", "load_model", "pick_device", "safe_torch_load"]

TINY = "tiny"  # `--model tiny`: the tiny configuration with random weights (when no file of that name is there)
TINY_NOTE = (
    "note: --model tiny is the tiny configuration with random weights (nothing trained), for trying the command: "
    "its answers and masks mean nothing"
)


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: the one named, else CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PredictInputError(f"--device: got {device!r}, expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictInputError(f"--device: got {device!r}, but CUDA is not available here; use --device cpu")
    return dev


def safe_torch_load(path: str | Path, trust: bool = False) -> Any:
    """torch.load without arbitrary unpickling (`pixelqa.checkpoints`); a refusal is a PredictInputError."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle that is not torch.save's: the refusal says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return checkpoints.safe_torch_load(path, trust, what="--model", hint="Pass --trust-checkpoint")
    except checkpoints.CheckpointError as exc:
        raise PredictInputError(str(exc)) from None


def build_tiny(device: str | None = "cpu", seed: int = 0) -> tuple[UniPixel, dict[str, Any]]:
    """(UniPixel in eval mode, info for run.json): the tiny configuration with random weights, on CPU unless a device
    is named, for trying predict without any download (as `python -m pixelqa.demo --model tiny`)."""
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.unipixel import UniPixel

    dev = pick_device("cpu" if device in (None, "auto") else device)
    cfg = UniPixelConfig(preset="tiny", seed=seed)
    # random weights give object scores near zero, which would gate every mask away; without the gate the
    # untrained decoder still draws a mask around the prompt, so the outputs have something to show
    cfg.mask_decoder.pred_obj_scores = False
    model = UniPixel(cfg).to(dev).eval()
    info = {"path": TINY, "format": "tiny (random weights)", "device": str(dev), "dtype": cfg.dtype}
    info.update(config=asdict(cfg), recipe={})
    return model, info


def is_tiny(path: str | Path) -> bool:
    """Whether `--model` names the random tiny model (`tiny`, with no file or folder of that name here)."""
    return str(path) == TINY and not Path(path).exists()


def _checkpoint_file(p: Path) -> Path:
    """The checkpoint file of a path: itself, or a run folder's checkpoints/last.ckpt."""
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise PredictInputError(
            f"--model: {str(p)!r} is a folder with no config.json (released), unipixel_config.json (save_pretrained) "
            f"or checkpoints/last.ckpt (Lightning run)"
        )
    return p


def load_model(path: str | Path, device: str | None = None, trust: bool = False) -> tuple[UniPixel, dict[str, Any]]:
    """(UniPixel in eval mode on the device, info for run.json) from a released / save_pretrained folder or a ckpt,
    or `tiny` (`build_tiny`: random weights)."""
    from pixelqa.model.config import UniPixelConfig
    from pixelqa.model.release import ReleaseError
    from pixelqa.model.unipixel import CONFIG_FILE, UniPixel

    if str(path) == "":  # Path("") is the current folder
        raise PredictInputError("--model: got an empty path, expected a model folder, a checkpoint file or 'tiny'")
    if is_tiny(path):
        return build_tiny(device)
    dev = pick_device(device)
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    p = Path(path)
    if not p.exists():
        raise PredictInputError(
            f"--model: {str(p)!r} does not exist; expected a model folder, a checkpoint file or 'tiny' (random)"
        )
    recipe: dict[str, Any] = {}
    if p.is_dir() and (p / "config.json").is_file():
        kind = "released"
        try:
            model = UniPixel(UniPixelConfig(preset="unipixel-3b", path=str(p), dtype=dtype))
        except ReleaseError as exc:  # names the file and the key already
            raise PredictInputError(f"--model: {exc}") from None
        # the release's tokenizer_config.json records do_resize=false (its loader resized frames beforehand) and
        # the processor merges it into every image / video call, so sides not a multiple of 28 would fail there
        model.processor.tokenizer.init_kwargs.pop("do_resize", None)
    elif p.is_dir() and (p / CONFIG_FILE).is_file():
        kind = "save_pretrained"
        try:  # read as a Lightning checkpoint is: --trust-checkpoint means the same for both formats
            model = UniPixel.from_pretrained(p, load_weights=lambda f: safe_torch_load(f, trust), dtype=dtype)
        except PredictInputError:  # a refusal of the weights file, said as for a checkpoint
            raise
        except ValueError as exc:  # a ReleaseError or a damaged file: each names the file
            raise PredictInputError(f"--model: {exc}") from None
    else:
        kind = "lightning"
        ckpt_file = _checkpoint_file(p)
        ckpt = safe_torch_load(ckpt_file, trust)
        model, recipe = _from_lightning(ckpt, ckpt_file, dtype)
    model = model.to(dev).eval()
    info = {
        "path": str(p.resolve()),
        "format": kind,
        "device": str(dev),
        "dtype": dtype,
        "config": asdict(model.cfg),
        "recipe": recipe,
    }
    if kind == "lightning":  # a run folder names no file by itself: the one read
        info["checkpoint_file"] = str(ckpt_file.resolve())
    if kind == "released":
        # the config's preset only picks the released-folder loader, and its tiny sizes are unused: the sizes are
        # the folder's own (config.json), recorded instead
        info["config"].update(preset=None, tiny=None)
        info["sizes"] = released_sizes(model)
    return model, info


def released_sizes(model: UniPixel) -> dict[str, Any]:
    """The language and vision sizes of a model built from a released folder (its Qwen2.5-VL config)."""
    config = model.qwen.config
    text = getattr(config, "text_config", None) or config
    vision = getattr(config, "vision_config", None)
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    sizes: dict[str, Any] = {k: getattr(text, k, None) for k in (*keys, "vocab_size", "max_position_embeddings")}
    if vision is not None:
        sizes["vision_depth"] = getattr(vision, "depth", None)
        sizes["vision_hidden_size"] = getattr(vision, "hidden_size", None)
    return sizes


def _from_lightning(ckpt: Any, path: Path, dtype: str):
    """(UniPixel, recipe) from a loaded Lightning checkpoint dict of pixelqa.fit."""
    from omegaconf import OmegaConf

    from pixelqa.eval.model_loading import literal
    from pixelqa.train.module import model_from_checkpoint

    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "model" not in hp or "state_dict" not in ckpt:
        raise PredictInputError(
            f"--model: {str(path)!r} records no model config (hyper_parameters.model); not a PixelQA checkpoint"
        )
    if not isinstance(hp["model"], Mapping):
        raise PredictInputError(
            f"--model: {str(path)!r} records hyper_parameters.model={hp['model']!r:.80}; expected a dict"
        )
    # the stored settings are data from the file: escaped, so that the model build (which merges them into a config)
    # resolves no `${...}` they hold (an environment variable would end up in run.json or an error message)
    model_cfg = literal(OmegaConf.to_container(OmegaConf.create(hp["model"])))
    model_cfg["dtype"] = dtype
    recipe = OmegaConf.to_container(OmegaConf.create(hp.get("recipe", hp)), resolve=False)
    return model_from_checkpoint(model_cfg, ckpt, str(path), stage=3), recipe
