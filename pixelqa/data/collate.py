"""Samples -> `pixelqa.batch.Batch`: chat template, tokenisation, label masking, token cap, prompts and masks.

Per sample: the frames are decoded (and uniformly subsampled to `num_frames` if the loader did not), the
conversation is rendered with the processor's chat template (media placeholder at the start of the first
user turn; memory preambles rendered here so their frame tags match the sampled frames), tokenised by
the Qwen2.5-VL processor (which expands the image/video pads to the grid), labels keep the assistant
tokens only (each answer and its <|im_end|>), and sequences above `max_tokens` are truncated (or the
sample dropped) with prompts / memory / seg lists cut to the tokens that remain.

memory_variant (paper Tab. 11b):
- "memory_bank": a user turn with `memory_objects` gets the memory preamble (`prompt_format.memory_prompt`),
  one <|mem|> per object per visible frame; `Batch.memory` lists them in <|mem|> order.
- "ref_only": the preamble lists each object once as ``[k]: <|ref|>`` (its own prompt when the sample has one,
  else a mask prompt on its first visible frame); no <|mem|>.
- "ref_seg": as ref_only, and every <|ref|> whose prompt names an object is followed directly (no space:
  ``<|ref|><|seg|>``, the paper's ``<REF><SEG>``, as `UniPixel.chat` writes it) by a <|seg|> in the user text,
  whose target is that object's masks (in `seg_masks` in sequence order; no LM loss on it).
- "ref_seg_pool": the same text and targets as "ref_seg"; the model additionally pools features under
  the predicted masks (a model-side switch, nothing changes here).

max_pairs (default 3, UniPixel's max_conv_turns): a sample whose request/answer pairs are independent
(`meta["independent_turns"]`: the converters' per-image groups of referring expressions or classes) keeps a
random, ordered subset of that many pairs per visit (`keep_pairs`), drawn from numpy's global RNG, which training
seeds per batch. Evaluation draws them before collation from the sample's key alone (`evaluation_pairs`), so the
expressions scored do not change with the batch size, the seed or the number of processes.
Frame subsampling leaves `meta["keep_all_frames"]` samples whole.

prompt_mode ("keep" | "point_box" | "point" | "box"): optionally redraw visual prompts from the GT masks here
(stage 1: "point_box"), with numpy's global RNG, for pipelines that do not sample prompts in the loader.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pixelqa.batch import Batch, MemoryRef, VisualPrompt
from pixelqa.data import masks
from pixelqa.data.budgets import PixelBudget
from pixelqa.data.loader import object_masks, subsample_frames
from pixelqa.data.prompts import PROMPT_MODES, resample_prompts
from pixelqa.data.schema import FrameDecodeError, Prompt, Sample
from pixelqa.prompt_format import (
    MEM,
    REF,
    SEG,
    count_ref,
    memory_prompt,
    object_tag,
    pair_frames,
    parse_memory_prompt,
)

log = logging.getLogger(__name__)

MEMORY_VARIANTS: tuple[str, ...] = ("memory_bank", "ref_only", "ref_seg", "ref_seg_pool")
OVERFLOW: tuple[str, ...] = ("truncate", "drop")
IGNORE_INDEX = -100
DEFAULT_FPS = 2.0  # used for second_per_grid_ts when a video has no fps
MAX_PAIRS = 3  # independent request/answer pairs kept per visit (UniPixel's max_conv_turns)
PAIRS_SALT = 53  # evaluation_pairs' generator: [salt, crc32(key)]


def keep_pairs(sample: Sample, max_pairs: int | None, rng: np.random.Generator | None = None) -> Sample:
    """At most `max_pairs` request/answer pairs, in order, of a sample whose pairs are independent (the sample itself
    otherwise, or when it has no more); drawn from `rng`, or from numpy's global RNG when None."""
    pairs = len(sample.turns) // 2
    if max_pairs is None or not sample.meta.get("independent_turns") or pairs <= max_pairs:
        return sample
    if sample.prompts or len(sample.turns) % 2:
        return sample  # pairs tied to visual prompts, or an odd turn count: not independent pairs
    draw = np.random.choice if rng is None else rng.choice
    keep = sorted(int(k) for k in draw(pairs, max_pairs, replace=False))
    out = copy.copy(sample)
    out.turns = [turn for k in keep for turn in sample.turns[2 * k : 2 * k + 2]]
    return out


def evaluation_pairs(sample: Sample, max_pairs: int | None = MAX_PAIRS) -> Sample:
    """`keep_pairs` for evaluation: a draw seeded by the sample's key alone (a stable hash, not Python's salted
    `hash()`), the same in every run, batch, process and worker, and leaving the global RNGs alone."""
    if max_pairs is None or not sample.meta.get("independent_turns") or len(sample.turns) // 2 <= max_pairs:
        return sample
    return keep_pairs(sample, max_pairs, np.random.default_rng([PAIRS_SALT, zlib.crc32(sample.key.encode())]))


class Collator:
    """Turns a list of Samples into a padded `Batch` for the model (see module docstring)."""

    def __init__(
        self,
        processor: Any,
        num_frames: int = 8,
        max_tokens: int = 4096,
        memory_variant: str = "memory_bank",
        overflow: str = "truncate",
        system_prompt: str | None = None,
        prompt_mode: str = "keep",
        box_jitter: float = 0.1,
        max_pairs: int | None = MAX_PAIRS,
        budget: PixelBudget | None = None,
    ) -> None:
        if memory_variant not in MEMORY_VARIANTS:
            raise ValueError(f"memory_variant: got {memory_variant!r}, expected one of {MEMORY_VARIANTS}")
        if overflow not in OVERFLOW:
            raise ValueError(f"overflow: got {overflow!r}, expected one of {OVERFLOW}")
        if num_frames < 1 or max_tokens < 16:
            raise ValueError(f"num_frames/max_tokens: got {num_frames}/{max_tokens}, expected >= 1 / >= 16")
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode: got {prompt_mode!r}, expected one of {PROMPT_MODES}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs: got {max_pairs}, expected None or >= 1")
        self.prompt_mode, self.box_jitter, self.max_pairs = prompt_mode, box_jitter, max_pairs
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.num_frames, self.max_tokens = num_frames, max_tokens
        self.memory_variant, self.overflow, self.system_prompt = memory_variant, overflow, system_prompt
        tok = self.tokenizer
        ids = {t: tok.convert_tokens_to_ids(t) for t in (REF, MEM, SEG, "<|im_start|>", "<|im_end|>")}
        unk = getattr(tok, "unk_token_id", None)
        missing = [t for t, i in ids.items() if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"processor.tokenizer: tokens {missing} are not single tokens; add them as special tokens")
        self.ref_id, self.mem_id, self.seg_id = ids[REF], ids[MEM], ids[SEG]
        self.im_start_id, self.im_end_id = ids["<|im_start|>"], ids["<|im_end|>"]
        self.assistant_header = tok.encode("assistant\n", add_special_tokens=False)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.im_end_id
        self.image_pad_id = getattr(processor, "image_token_id", None) or tok.convert_tokens_to_ids("<|image_pad|>")
        self.video_pad_id = getattr(processor, "video_token_id", None) or tok.convert_tokens_to_ids("<|video_pad|>")
        # pixel budgets passed at every processor call (None: the processor's own settings)
        self.budget = budget
        self.dropped = 0  # samples dropped so far (too long, nothing to learn, undecodable)
        self.truncated = 0  # samples cut to max_tokens so far

    # ------------------------------------------------------------------ text
    def _subsample_pairs(self, sample: Sample) -> Sample:
        """At most `max_pairs` request/answer pairs of a sample whose pairs are independent (UniPixel's
        max_conv_turns = 3), drawn from numpy's global RNG (seeded per batch by the DataModule), in order; a sample
        that evaluation already cut (`evaluation_pairs`) has no more and is kept as it is."""
        return keep_pairs(sample, self.max_pairs)

    def _object_prompt(self, sample: Sample, oid: int, visible: list[int]) -> Prompt:
        """The sample's own prompt of object `oid`, else a mask prompt on its first visible frame."""
        for p in sample.prompts:
            if p.object_id == oid:
                return p
        return Prompt("mask", visible[0], oid, rle=sample.objects[oid].masks[visible[0]])

    def render(self, sample: Sample) -> tuple[list[dict], list[Prompt], list[int], list[tuple[int, int]]]:
        """Chat messages plus, in token order, the prompts (<|ref|>), seg object ids (<|seg|>) and memory refs."""
        kind = "video" if sample.media.kind == "video" else "image"
        t = sample.media.num_frames
        ref_seg = self.memory_variant in ("ref_seg", "ref_seg_pool")
        prompts: list[Prompt] = []
        segs: list[int] = []
        mems: list[tuple[int, int]] = []
        messages: list[dict] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        cursor = 0
        for i, turn in enumerate(sample.turns):
            if turn.role == "assistant":
                segs.extend(turn.seg_objects)
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
                continue
            parts: list[str] = []
            if turn.memory_objects:
                visible = {oid: masks.visible_frames(sample.objects[oid].masks) for oid in turn.memory_objects}
                if self.memory_variant == "memory_bank":
                    pre = memory_prompt(visible, t, kind)
                    mems.extend(parse_memory_prompt(pre))
                else:
                    head = memory_prompt({}, t, kind)  # the header line alone
                    lines = [head]
                    for oid in sorted(visible):
                        if not visible[oid]:
                            continue
                        prompts.append(self._object_prompt(sample, oid, visible[oid]))
                        lines.append(f"{object_tag(oid)}: {REF}" + (SEG if ref_seg else ""))
                        if ref_seg:
                            segs.append(oid)
                    pre = "\n".join(lines)
                parts.append(pre)
            text = turn.text
            n_ref = count_ref(text)
            own = sample.prompts[cursor : cursor + n_ref]
            cursor += n_ref
            prompts.extend(own)
            if ref_seg and n_ref:
                pieces = text.split(REF)
                out = pieces[0]
                for p, rest in zip(own, pieces[1:]):
                    if p.object_id is not None and p.object_id in sample.objects:
                        # no space: chat writes the same, and ref_seg_pool finds the prompt-side <|seg|> as the
                        # token right after its <|ref|> (a space token in between made it a no-op)
                        out += REF + SEG + rest
                        segs.append(p.object_id)
                    else:
                        out += REF + rest
                text = out
            parts.append(text)
            content: list[dict] = [{"type": "text", "text": "\n".join(parts)}]
            if i == 0:
                content.insert(0, {"type": kind})
            messages.append({"role": "user", "content": content})
        if cursor != len(sample.prompts):
            raise ValueError(f"{sample.key}: {cursor} <|ref|> in user turns but {len(sample.prompts)} prompts")
        return messages, prompts, segs, mems

    def _chat_text(self, messages: list[dict]) -> str:
        """The processor's chat template, or plain ChatML (Qwen's format) when it has none."""
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        media = {
            "image": "<|vision_start|><|image_pad|><|vision_end|>",
            "video": "<|vision_start|><|video_pad|><|vision_end|>",
        }
        out = []
        if messages[0]["role"] != "system":
            out.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        for m in messages:
            body = "".join(media.get(c["type"], c.get("text", "")) for c in m["content"])
            out.append(f"<|im_start|>{m['role']}\n{body}<|im_end|>\n")
        return "".join(out)

    def _labels(self, ids: torch.Tensor, n_assistant: int, key: str) -> torch.Tensor:
        """Copy of ids with -100 outside assistant answers (answer tokens and their <|im_end|> are kept)."""
        labels = torch.full_like(ids, IGNORE_INDEX)
        seq = ids.tolist()
        hdr = self.assistant_header
        found = 0
        for i, tok in enumerate(seq):
            if tok == self.im_start_id and seq[i + 1 : i + 1 + len(hdr)] == hdr:
                start = i + 1 + len(hdr)
                end = start
                while end < len(seq) and seq[end] != self.im_end_id:
                    end += 1
                labels[start : min(end + 1, len(seq))] = ids[start : min(end + 1, len(seq))]
                found += 1
        if found != n_assistant:
            raise ValueError(
                f"{key}: found {found} assistant headers in the tokens, expected {n_assistant}; "
                "the chat template must render '<|im_start|>assistant\\n'"
            )
        return labels

    # ------------------------------------------------------------------ one sample
    def _encode(self, sample: Sample) -> dict | None:
        """Tensors of one sample, or None when it must be dropped."""
        sample = subsample_frames(sample, self.num_frames)
        sample = self._subsample_pairs(sample)
        if self.prompt_mode != "keep":
            # Drawn from numpy's global RNG so a caller seeding it per batch (the DataModule) repeats the draw.
            rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
            sample = resample_prompts(copy.copy(sample), rng, self.prompt_mode, self.box_jitter)
        frames = sample.decode_frames()  # (T, H, W, 3) uint8
        messages, prompts, segs, mems = self.render(sample)
        text = self._chat_text(messages)
        if sample.media.kind == "video":
            fps = float(sample.media.fps or DEFAULT_FPS)
            n, h, w = frames.shape[:3]
            # The frames are already sampled: metadata with the effective fps gives second_per_grid_ts.
            meta = {
                "total_num_frames": n,
                "fps": fps,
                "frames_indices": list(range(n)),
                "height": h,
                "width": w,
                "duration": n / fps,
            }
            kwargs = self.budget.call_kwargs("video") if self.budget is not None else {"videos_kwargs": {}}
            kwargs["videos_kwargs"].update({"do_sample_frames": False, "video_metadata": [meta]})
            out = self.processor(text=[text], videos=[frames], return_tensors="pt", **kwargs)
        else:
            kwargs = self.budget.call_kwargs("image") if self.budget is not None else {}
            out = self.processor(text=[text], images=[frames[0]], return_tensors="pt", **kwargs)
        ids = out["input_ids"][0]
        n_assistant = sum(1 for m in messages if m["role"] == "assistant")
        labels = self._labels(ids, n_assistant, sample.key)
        mm = out.get("mm_token_type_ids")
        if mm is None:
            mm = (ids == self.image_pad_id).long() + 2 * (ids == self.video_pad_id).long()
        else:
            mm = mm[0].long()
        cut = 0
        if len(ids) > self.max_tokens:
            media_pos = torch.nonzero(mm > 0).flatten()
            last_media = int(media_pos.max()) if len(media_pos) else -1
            if self.overflow == "drop" or last_media >= self.max_tokens:
                return self._drop(sample, f"{len(ids)} tokens > max_tokens {self.max_tokens}")
            cut = len(ids) - self.max_tokens
            ids, labels, mm = ids[: self.max_tokens], labels[: self.max_tokens], mm[: self.max_tokens]
            # Keep the lists consistent with the special tokens that survived the cut.
            prompts = prompts[: int((ids == self.ref_id).sum())]
            mems = mems[: int((ids == self.mem_id).sum())]
            segs = segs[: int((ids == self.seg_id).sum())]
        if not (labels != IGNORE_INDEX).any():
            return self._drop(sample, "no assistant tokens left to learn from")
        if cut:
            self.truncated += 1
            log.warning("collate truncated sample %s by %d tokens to max_tokens %d", sample.key, cut, self.max_tokens)
        for name, tok_id, items in (
            ("<|ref|>", self.ref_id, prompts),
            ("<|mem|>", self.mem_id, mems),
            ("<|seg|>", self.seg_id, segs),
        ):
            if int((ids == tok_id).sum()) != len(items):
                raise ValueError(
                    f"{sample.key}: {int((ids == tok_id).sum())} {name} tokens but {len(items)} entries; "
                    f"is {name} a single special token of the tokenizer, and absent from the raw text?"
                )
        h, w = sample.media.size
        enc = {
            "input_ids": ids,
            "labels": labels,
            "mm": mm,
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),  # (T, H, W, 3) -> (T, 3, H, W)
            "prompts": [self._visual_prompt(p, h, w) for p in prompts],
            "memory": [MemoryRef(oid, f, self._pair_mask(sample, oid, f)) for oid, f in mems],
            "seg": self._seg_targets(sample, segs),
            "seg_ids": list(segs),
            "sample": sample,
            "truncated_tokens": cut,
        }
        for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            if k in out and out[k] is not None:
                enc[k] = torch.as_tensor(out[k])
        return enc

    @staticmethod
    def _pair_mask(sample: Sample, oid: int, frame: int) -> torch.Tensor:
        """(H, W) union of an object's masks on the frame pair starting at `frame` (one <|mem|> per pair)."""
        t = sample.media.num_frames
        own = sample.objects[oid].masks
        parts = [torch.from_numpy(masks.decode(own[f])).bool() for f in pair_frames(frame // 2, t) if f in own]
        return torch.stack(parts).any(0)

    def _drop(self, sample: Sample, why: str) -> None:
        self.dropped += 1
        log.warning("collate dropped sample %s (%d dropped so far): %s", sample.key, self.dropped, why)

    @staticmethod
    def _visual_prompt(p: Prompt, h: int, w: int) -> VisualPrompt:
        """A schema prompt (source pixels) -> VisualPrompt (coords normalised by the frame size)."""
        if p.type == "mask":
            return VisualPrompt("mask", int(p.frame), (), torch.from_numpy(masks.decode(p.rle)), p.object_id)
        scale = (w, h) * (len(p.coords) // 2)
        return VisualPrompt(
            p.type, int(p.frame), tuple(float(c) / s for c, s in zip(p.coords, scale)), None, p.object_id
        )

    @staticmethod
    def _seg_targets(sample: Sample, segs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, T, H, W) bool masks and (K, T) bool annotated-flags of the <|seg|> targets.

        The masks are a transposed view of what pycocotools writes (`loader.object_masks`), taken without a copy.
        """
        m, valid = object_masks(sample, segs)
        return torch.from_numpy(m), torch.from_numpy(valid)

    # ------------------------------------------------------------------ batch
    def encode(self, sample: Sample) -> dict | None:
        """The tensors of one sample, or None (counted in `dropped`, logged) when it cannot be used."""
        try:
            return self._encode(sample)
        except FrameDecodeError as e:
            return self._drop(sample, str(e))  # an undecodable frame: skip the sample, loudly

    def __call__(self, samples: list[Sample]) -> Batch:
        """Collate samples (dropping those that cannot fit) into a right-padded Batch."""
        encs = [e for e in (self.encode(s) for s in samples) if e is not None]
        if not encs:
            raise ValueError(f"samples: all {len(samples)} samples of the batch were dropped (see warnings)")
        return self.assemble(encs)

    def assemble(self, encs: list[dict]) -> Batch:
        """A right-padded Batch of encoded samples (`encode` outputs; extra per-sample `meta` entries kept)."""
        if not encs:
            raise ValueError("encs: got no encoded samples, expected at least one")
        length = max(len(e["input_ids"]) for e in encs)
        b = len(encs)
        input_ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        mm = torch.zeros((b, length), dtype=torch.long)
        for i, e in enumerate(encs):
            n = len(e["input_ids"])
            input_ids[i, :n], attention[i, :n], labels[i, :n], mm[i, :n] = e["input_ids"], 1, e["labels"], e["mm"]

        def cat(key: str) -> torch.Tensor | None:
            parts = [e[key] for e in encs if key in e]
            return torch.cat(parts, dim=0) if parts else None

        return Batch(
            input_ids=input_ids,
            attention_mask=attention,
            labels=labels,
            mm_token_type_ids=mm,
            frames=[e["frames"] for e in encs],
            pixel_values=cat("pixel_values"),
            image_grid_thw=cat("image_grid_thw"),
            pixel_values_videos=cat("pixel_values_videos"),
            video_grid_thw=cat("video_grid_thw"),
            second_per_grid_ts=cat("second_per_grid_ts"),
            prompts=[e["prompts"] for e in encs],
            memory=[e["memory"] for e in encs],
            seg_masks=[e["seg"][0] for e in encs],
            seg_valid=[e["seg"][1] for e in encs],
            seg_object_ids=[e["seg_ids"] for e in encs],
            tasks=[e["sample"].task for e in encs],
            keys=[e["sample"].key for e in encs],
            meta=[
                {
                    **self._meta(e["sample"], len(e["input_ids"])),
                    **e.get("extra_meta", {}),
                    "truncated_tokens": e["truncated_tokens"],
                }
                for e in encs
            ],
        )

    @staticmethod
    def _meta(sample: Sample, num_tokens: int) -> dict:
        """Per-sample metadata for evaluation: answer, choices, question type and the source's own meta."""
        return {
            **sample.meta,
            "answer": sample.answer,
            "choices": sample.choices,
            "question_type": sample.meta.get("question_type"),
            "source": sample.source,
            "split": sample.split,
            "size": tuple(sample.media.size),
            "num_tokens": num_tokens,
        }
