"""Qwen2.5-VL backbone: the tiny offline preset, local real checkpoints, special tokens and LoRA.

Presets:
- ``tiny``: a random-init Qwen2.5-VL of a few hundred K parameters with an offline byte-level BPE tokenizer
  trained on a fixed built-in corpus; everything is deterministic from ``seed``. Pixel budgets are small so
  that a 112 x 112 frame gives 8 x 8 patches = 4 x 4 merged visual tokens. With ``path`` set, the tiny model is
  read from that folder instead (a Qwen2.5-VL base folder of tiny size, as `pixelqa.tinybase` writes for the demo).
- ``unipixel-3b`` / ``unipixel-7b``: weights, tokenizer and processor loaded from ``path`` (a local directory,
  never the hub): a released UniPixel folder or a Qwen2.5-VL base folder, read by `pixelqa.model.release`. If that
  directory holds a ``config.json`` but no weight files, or ``random_init=True``, the real-size architecture is
  built with random weights (GPU benchmarks); the tokenizer/processor then fall back to the tiny offline ones when
  the directory has none (token ids are then remapped to fit the vocabulary).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pixelqa.model.config import TinySizeConfig
from pixelqa.prompt_format import SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformers import (
        PreTrainedTokenizerBase,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    from pixelqa.model.release import ModelFolder

PRESETS = ("tiny", "unipixel-3b", "unipixel-7b")

# Qwen's own special tokens, in the order of the official vocabulary (ids 151643..).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# A Qwen-style chat template with Qwen's default system prompt (as the released model is trained and run).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Fixed corpus of the tiny tokenizer: the phrases of our prompts and answers, so common words become tokens.
_TINY_CORPUS = (
    "The relevant regions for this question are [1] [2] [3] [4] [5] [6] [7] [8] [9] [10].",
    "There are no relevant regions for this question.",
    "Here is a video with 8 frames denoted as <1> to <8>. The highlighted regions are as follows:",
    "Here is an image. The highlighted regions are as follows:",
    "Please segment the object. What is the object doing? Describe the region in detail.",
    "What is [1] holding? How does the behavior of [1] differ from [2] and [3]? Answer with the option's letter.",
    "A red circle moves left. A blue square moves right. A green triangle stays still. yes no",
    "Sure, it is a person, a dog, a cat, a car, a ball, a bird on the left, the right, the top, the bottom.",
    "user assistant system 0 1 2 3 4 5 6 7 8 9 A B C D (A) (B) (C) (D) , . ? ! : ; ' \" - ( ) [ ] < >",
    "You are a helpful assistant. [0] [1] <1>-<2> <3>-<4> <5>-<6> <7>-<8> The best option is (",
)

TINY_VOCAB_SIZE = 640
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
QWEN_MIN_PIXELS = 56 * 56  # Qwen2.5-VL's own processor defaults
QWEN_MAX_PIXELS = 28 * 28 * 1280


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A deterministic byte-level BPE tokenizer trained offline on a fixed corpus, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_TINY_CORPUS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_processor(
    tokenizer: PreTrainedTokenizerBase | None = None,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor around the tiny tokenizer; default pixel budgets give 112 x 112 -> 4 x 4 tokens."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size)
    # the per-frame budget is the whole rule, as in the released loader (`pixelqa.data.budgets`)
    video_processor = Qwen2VLVideoProcessor(size=size, do_sample_frames=False, cap_pixels_per_frame=False)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_qwen_config(tokenizer: PreTrainedTokenizerBase, sizes: TinySizeConfig | None = None) -> Qwen2_5_VLConfig:
    """Config of the tiny Qwen2.5-VL (default sizes: hidden 64, 2 layers) whose token ids match `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    s = sizes or TinySizeConfig()
    check_tiny_sizes(s)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": s.hidden,
        "intermediate_size": 2 * s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": max(1, s.heads // 2),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section(s)},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": s.vit_depth,
        "hidden_size": s.vit_hidden,
        "intermediate_size": 2 * s.vit_hidden,
        "num_heads": s.vit_heads,
        "out_hidden_size": s.hidden,
        "window_size": 56,
        "fullatt_block_indexes": [s.vit_depth - 1],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def mrope_section(sizes: TinySizeConfig) -> list[int]:
    """Qwen2.5-VL's (time, height, width) split of the rotary half head, in the released 2 : 3 : 3 proportion."""
    half = sizes.hidden // sizes.heads // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def check_tiny_sizes(sizes: TinySizeConfig) -> None:
    """Raise a clear error for tiny sizes the Qwen2.5-VL layers cannot take."""
    for name in ("hidden", "layers", "heads", "vit_hidden", "vit_depth", "vit_heads"):
        value = getattr(sizes, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model.tiny.{name}: got {value!r}, expected a positive integer")
    if sizes.hidden % (4 * sizes.heads):
        raise ValueError(
            f"model.tiny.hidden: got {sizes.hidden} with {sizes.heads} heads, expected a multiple of 4 x heads "
            "(an even rotary head of at least 4)"
        )
    if sizes.heads > 1 and sizes.heads % 2:
        raise ValueError(f"model.tiny.heads: got {sizes.heads}, expected 1 or an even number (key/value heads: half)")
    if sizes.vit_hidden % sizes.vit_heads or (sizes.vit_hidden // sizes.vit_heads) % 4:
        raise ValueError(
            f"model.tiny.vit_hidden: got {sizes.vit_hidden} with {sizes.vit_heads} heads, "
            "expected a multiple of 4 x vit_heads"
        )


def _torch_dtype(name: str) -> torch.dtype:
    """torch dtype from its config name."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype: got {name!r}, expected one of {sorted(table)}")
    return table[name]


def build_processor(
    preset: str = "tiny", path: str | None = None, folder: ModelFolder | None = None
) -> Qwen2_5_VLProcessor:
    """The processor (tokenizer + image/video processors + chat template) for a preset, before special tokens.

    `folder`: the `release.ModelFolder` of `path` when the caller has inspected it already.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: got {preset!r}, expected one of {PRESETS}")
    if preset == "tiny" and path is None:
        return build_tiny_processor()
    root = _check_path(preset, path)
    has_tokenizer = (root / "tokenizer.json").exists() or (root / "tokenizer_config.json").exists()
    if not has_tokenizer:
        # config-only directory (random-init benchmarks): tiny tokenizer, Qwen2.5-VL's real pixel budgets
        return build_tiny_processor(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    from pixelqa.model import release

    return release.build_processor(folder or release.inspect_folder(preset, str(root)))


def _check_path(preset: str, path: str | None) -> Path:
    """Validate the local directory of a real preset."""
    if path is None:
        raise ValueError(f"path: got None, expected a local directory of Qwen2.5-VL weights for preset={preset!r}")
    root = Path(path)
    if not root.is_dir() or not (root / "config.json").exists():
        raise FileNotFoundError(
            f"path: {path!r} is not a local model directory with config.json (preset={preset!r}); "
            "download the Qwen2.5-VL checkpoint there first, nothing is fetched from the hub"
        )
    return root


def add_special_tokens(processor: Qwen2_5_VLProcessor) -> dict[str, int]:
    """Add <|ref|> <|mem|> <|seg|> to the processor's tokenizer (idempotent); returns their ids."""
    tok = processor.tokenizer
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def build_qwen(
    preset: str,
    path: str | None,
    seed: int,
    dtype: str,
    tokenizer: PreTrainedTokenizerBase,
    random_init: bool = False,
    folder: ModelFolder | None = None,
    tiny: TinySizeConfig | None = None,
) -> Qwen2_5_VLForConditionalGeneration:
    """The bare `Qwen2_5_VLForConditionalGeneration` of a preset (special tokens not yet added).

    `tiny`: the sizes of preset=tiny without a path (default: the test model's); a folder's config gives them otherwise.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from pixelqa.model import release

    torch_dtype = _torch_dtype(dtype)
    if preset == "tiny" and path is None:
        config = tiny_qwen_config(tokenizer, tiny)
        with fork_rng(seed):
            model = Qwen2_5_VLForConditionalGeneration(config)
        return model.to(torch_dtype)
    root = _check_path(preset, path)
    folder = folder or release.inspect_folder(preset, str(root))
    config = release.qwen_config(folder.config)  # from the JSON dict: from_pretrained misreads a release's config
    if random_init or not folder.weight_map:
        if tokenizer is not None and not (root / "tokenizer_config.json").exists():
            # a fallback tokenizer has other ids for the media tokens: point the config at the tokenizer's
            config.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
            config.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
            config.vision_start_token_id = tokenizer.convert_tokens_to_ids("<|vision_start|>")
            config.vision_end_token_id = tokenizer.convert_tokens_to_ids("<|vision_end|>")
            config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
        with fork_rng(seed):
            model = Qwen2_5_VLForConditionalGeneration(config)
        return model.to(torch_dtype)
    with no_init_weights():  # every weight is read from the folder next
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch_dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    release.load_qwen_weights(model, folder)
    return model


class fork_rng:
    """Context manager: seed torch's CPU RNG for deterministic init, restoring the outer state afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)
        return False


def resize_for_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    """Grow input/output embeddings to the tokenizer; new rows start at the mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    new = len(tokenizer)
    if new <= old:
        return
    with fork_rng(seed):
        model.resize_token_embeddings(new, mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            emb[old:] = emb[:old].mean(0, keepdim=True)


def lora_target_modules(vit: bool, llm: bool, num_vit_blocks: int) -> list[str]:
    """Regexes-free list of module-name suffixes peft should adapt (QKV/O of ViT and LLM)."""
    targets: list[str] = []
    if llm:
        targets += ["q_proj", "k_proj", "v_proj", "o_proj"]
    if vit:
        for i in range(num_vit_blocks):
            targets += [f"visual.blocks.{i}.attn.qkv", f"visual.blocks.{i}.attn.proj"]
    return targets


def apply_lora(model: nn.Module, rank: int, alpha: int, dropout: float, vit: bool, llm: bool) -> nn.Module:
    """Wrap the Qwen model with peft LoRA on the QKV/O projections; the base weights stay frozen by peft."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    if rank < 1:
        raise ValueError(f"lora.rank: got {rank}, expected >= 1")
    if not (vit or llm):
        raise ValueError("lora: enabled but both vit and llm are False; nothing to adapt")
    depth = model.config.vision_config.depth
    # LLM q/k/v/o_proj live only in the language model, so plain suffixes are unambiguous there;
    # the ViT's fused `attn.qkv` / `attn.proj` are named with their block path.
    cfg = PeftLoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(vit, llm, depth),
        bias="none",
    )
    return get_peft_model(model, cfg)


def unwrap_qwen(model: nn.Module) -> nn.Module:
    """The `Qwen2_5_VLForConditionalGeneration` inside a possibly peft-wrapped backbone."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.base_model.model
    return model


class PreNormCatcher:
    """Catches the input of the LLM's final norm (the last layer's pre-norm residual stream) during a forward."""

    def __init__(self, qwen: nn.Module):
        self.norm = qwen.model.language_model.norm
        self.value: torch.Tensor | None = None

    def __enter__(self) -> PreNormCatcher:
        self.handle = self.norm.register_forward_pre_hook(lambda _m, args: setattr(self, "value", args[0]))
        return self

    def __exit__(self, *exc) -> bool:
        self.handle.remove()
        return False
