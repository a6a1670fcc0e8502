"""Object memory bank: object id -> per-frame masks for one conversation, and the text it injects.

Memory variants (`MemoryConfig.variant`, paper Tab. 11b), as `UniPixel.chat` runs them:
- ``ref_only``: one pass; each <|ref|> token carries its visual prompt's embedding; no <|seg|> is asked for in the
  prompt and nothing enters the bank except masks of <|seg|> tokens the model emits on its own.
- ``ref_seg``: one pass; every <|ref|> in the user text is followed directly by a <|seg|> (``<|ref|><|seg|>``, no
  space, the paper's ``<REF><SEG>``; the training collate writes the same); the hidden state of that prompt-side
  <|seg|> is decoded into the prompted object's mask, stored in the bank under the prompt's object id.
- ``ref_seg_pool``: the same text as ``ref_seg``; inside `UniPixel.forward` (training and chat alike) a <|seg|> that
  directly follows a <|ref|> is decoded in a first LLM pass, the visual features under its predicted mask (sigmoid
  weights, the prompt's frame, no gradient into the mask) are pooled, projected by M->L and added to that <|seg|>'s
  input embedding, and a second LLM pass gives the logits / LM loss (masks come from the first pass).
- ``memory_bank`` (the paper's): pre-filling turn (the model answers ``[1] <|seg|> [2] <|seg|> ...``; masks go to the
  bank), then memory injection: the question is re-asked with `prompt_format.memory_prompt` preamble (one <|mem|> per
  frame on which the object is visible, each replaced by that object's pooled feature on that frame) and every
  <|ref|> replaced by its object's ``[k]`` tag. Later turns can name bank objects directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from pixelqa.prompt_format import REF, frame_pairs, memory_prompt, object_tag, pair_frames, parse_prefill

VARIANTS = ("ref_only", "ref_seg", "ref_seg_pool", "memory_bank")


def check_variant(variant: str) -> str:
    """Raise on an unknown memory variant."""
    if variant not in VARIANTS:
        raise ValueError(f"memory.variant: got {variant!r}, expected one of {VARIANTS}")
    return variant


@dataclass
class ObjectMemoryBank:
    """Object id -> (T, H, W) bool masks for one conversation (empty at the start of a chat session)."""

    num_frames: int
    masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames: got {self.num_frames}, expected >= 1")

    def put(self, object_id: int, masks: torch.Tensor) -> None:
        """Store (overwrite) the (T, H, W) masks of an object: the bank keeps its own copy (a caller changing its
        tensor afterwards does not change the bank), and never changes a stored mask in place."""
        if object_id < 0:
            raise ValueError(f"object_id: got {object_id}, expected >= 0")
        if masks.dim() != 3 or masks.shape[0] != self.num_frames:
            raise ValueError(
                f"masks of object {object_id}: got shape {tuple(masks.shape)}, expected ({self.num_frames}, H, W)"
            )
        own = masks.bool().cpu()
        self.masks[object_id] = own.clone() if own is masks else own  # .bool().cpu() of a CPU bool tensor is itself

    def copy(self) -> ObjectMemoryBank:
        """A bank of its own (adding or replacing an object leaves this one as it is) sharing the stored masks."""
        return ObjectMemoryBank(self.num_frames, dict(self.masks))

    def visible_frames(self) -> dict[int, list[int]]:
        """Object id -> frames where its mask is non-empty (objects visible nowhere map to [])."""
        return {k: [t for t in range(self.num_frames) if bool(m[t].any())] for k, m in sorted(self.masks.items())}

    def memory_refs(self) -> list[tuple[int, int]]:
        """(object id, first frame of the pair) of every <|mem|> that `preamble` writes, in text order."""
        return [(k, 2 * g) for k, frames in self.visible_frames().items() for g in frame_pairs(frames)]

    def pair_mask(self, object_id: int, frame: int) -> torch.Tensor:
        """(H, W) union of an object's masks over the frame pair starting at `frame`."""
        return self.masks[object_id][list(pair_frames(frame // 2, self.num_frames))].any(0)

    def preamble(self, kind: str) -> str:
        """The memory-injection preamble for all visible objects ('' if none is visible)."""
        visible = {k: f for k, f in self.visible_frames().items() if f}
        if not visible:
            return ""
        return memory_prompt(visible, self.num_frames, kind=kind)

    def __contains__(self, object_id: int) -> bool:
        return object_id in self.masks

    def __len__(self) -> int:
        return len(self.masks)


def prefill_object_ids(answer: str, expected: int | None = None) -> list[int]:
    """Object ids of the <|seg|>s of a pre-filling answer; raise if `expected` is given and does not match."""
    ids = parse_prefill(answer)
    if expected is not None and len(ids) != expected:
        raise ValueError(f"pre-filling answer names {len(ids)} objects, expected {expected}: {answer!r}")
    return ids


def tag_refs(text: str, object_ids: list[int]) -> str:
    """`[k] <|ref|>` for the i-th <|ref|> of `text` (k = object_ids[i]), unless the user already wrote that tag."""
    parts = text.split(REF)
    if len(parts) - 1 != len(object_ids):
        raise ValueError(f"text has {len(parts) - 1} {REF} tokens but {len(object_ids)} object ids were given")
    out = parts[0]
    for obj, rest in zip(object_ids, parts[1:]):
        tag = object_tag(obj)
        if not out.rstrip().endswith(tag):
            out = f"{out}{tag} " if not out or out.endswith((" ", "\n")) else f"{out} {tag} "
        out += REF + rest
    return out


def replace_refs_with_tags(text: str, object_ids: list[int]) -> str:
    """Replace the i-th <|ref|> of `text` with the tag of object_ids[i] (memory injection), never doubling a tag."""
    tagged = tag_refs(text, object_ids)
    return re.sub(r"(\[\d+\]) ?" + re.escape(REF), r"\1", tagged)


def inject(question: str, bank: ObjectMemoryBank, kind: str, ref_object_ids: list[int] | None = None) -> str:
    """The memory-injected user text: preamble + question (with <|ref|>s turned into [k] tags)."""
    if ref_object_ids:
        question = replace_refs_with_tags(question, ref_object_ids)
    pre = bank.preamble(kind)
    return f"{pre}\n{question}" if pre else question
