"""A tiny, offline Qwen2.5-VL processor for tests: byte-level BPE trained in-process, real transformers classes.

Not a mock: `Qwen2_5_VLProcessor` with `Qwen2VLImageProcessor` / `Qwen2VLVideoProcessor` and a
`PreTrainedTokenizerFast` that keeps the Qwen special tokens and PixelQA's <|ref|> <|mem|> <|seg|> whole.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

from pixelqa.prompt_format import SPECIAL_TOKENS

QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML as Qwen2.5-VL formats it: a default system turn, media placeholders inside the user content.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Please segment the red triangle moving left. It is a small blue circle moving up.",
    "The relevant regions for this question are [1] [2] [3]. Which is larger? Describe briefly.",
    "What colour is the square? Options: (A) red (B) green (C) blue (D) yellow. Answer with the option's letter.",
    "Here is a video with 8 frames denoted as <1> to <8>. The highlighted regions are as follows:",
    "system user assistant You are a helpful assistant. How many shapes are there? Two. Three.",
]


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (a few hundred tokens) with the Qwen and PixelQA special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = list(QWEN_SPECIAL) + list(SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL[1:]) + list(SPECIAL_TOKENS),
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_processor(min_pixels: int = 28 * 28, max_pixels: int = 112 * 112) -> Qwen2_5_VLProcessor:
    """A Qwen2_5_VLProcessor over the tiny tokenizer (patch 14, merge 2, temporal patch 2)."""
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image = Qwen2VLImageProcessor(size=size)
    video = Qwen2VLVideoProcessor(size=size)
    return Qwen2_5_VLProcessor(
        image_processor=image, tokenizer=tiny_tokenizer(), video_processor=video, chat_template=CHAT_TEMPLATE
    )
