"""Multi-round inference for UniPixel: prompts, memory pre-filling / injection, greedy generation.

One `chat_turn` per user message. The conversation lives in a `ChatState` (media, turns as fed to the model,
the visual prompts and memory refs of those turns in text order, the object memory bank). A turn is atomic: it
runs on a `ChatState.fork()` of the history and publishes it into the history only once it has completed, so a
turn that raises or is interrupted (Ctrl-C, out of memory) leaves the history as it was. What each memory
variant does is documented in `pixelqa.model.memory`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pixelqa.batch import Batch, MemoryRef, VisualPrompt
from pixelqa.model.generation import PrefixCache, append_tokens, greedy_generate
from pixelqa.model.memory import ObjectMemoryBank, inject, tag_refs
from pixelqa.prompt_format import (
    MEM,
    REF,
    SEG,
    SPECIAL_TOKENS,
    count_ref,
    count_seg,
    object_ids_in,
    parse_prefill,
    prefill_answer,
    prefill_request,
)

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel


@dataclass
class ChatState:
    """A conversation: media, turns so far, their prompts and memory refs (text order), and the memory bank."""

    media: torch.Tensor  # (T, 3, H, W) uint8, the LLM's frames
    kind: str  # image | video
    bank: ObjectMemoryBank  # masks over the SAM frames
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user text, assistant text) as fed to the model
    prompts: list[VisualPrompt] = field(default_factory=list)
    memory: list[MemoryRef] = field(default_factory=list)
    injected: set[int] = field(default_factory=set)  # object ids whose memory is already in the context
    sam_media: torch.Tensor | None = None  # (T_sam, 3, H, W) uint8; None = media
    llm_index: list[int] | None = None  # LLM frame i is SAM frame llm_index[i]; None = identity
    visual_cache: dict = field(default_factory=dict, repr=False)  # ViT outputs of this conversation's media
    sam_cache: dict = field(default_factory=dict, repr=False)  # SAM image features of its SAM frames
    processor_kwargs: dict | None = None  # processor call arguments of this conversation (a pixel budget)
    progress: Callable[[int, int], None] | None = field(default=None, repr=False)  # SAM progress (done, total)

    def fork(self) -> ChatState:
        """A copy to continue the conversation from: its own turns, prompts, memory refs, injected ids and bank.

        The bank's masks are shared until a turn replaces them (the bank never changes a mask in place); the
        media, the media-only caches (`visual_cache`, `sam_cache`) and the settings stay shared.
        """
        new = copy.copy(self)
        new.turns = list(self.turns)
        new.prompts = list(self.prompts)
        new.memory = list(self.memory)
        new.injected = set(self.injected)
        new.bank = self.bank.copy()
        return new

    def publish(self, turn: ChatState) -> None:
        """Take over a completed turn's fork in place (the bank object stays the same, its masks are the turn's)."""
        self.bank.masks = turn.bank.masks
        vars(self).update({k: v for k, v in vars(turn).items() if k != "bank"})


@dataclass
class ChatResult:
    """What one chat turn returns."""

    text: str  # the assistant's answer
    masks: dict[int, torch.Tensor]  # object id -> (T_sam, H, W) bool, masks predicted in this turn
    bank: ObjectMemoryBank
    state: ChatState
    user_text: str = ""  # the user text actually fed to the model (after memory injection)


@dataclass
class Point:
    """A point prompt, normalised (x, y) in [0, 1], on a 0-based frame."""

    x: float
    y: float
    frame: int = 0
    object_id: int | None = None


@dataclass
class Box:
    """A box prompt, normalised (x1, y1, x2, y2) in [0, 1], on a 0-based frame."""

    x1: float
    y1: float
    x2: float
    y2: float
    frame: int = 0
    object_id: int | None = None


@dataclass
class Mask:
    """A mask prompt: (H, W) bool on a 0-based frame."""

    mask: torch.Tensor
    frame: int = 0
    object_id: int | None = None


def to_visual_prompt(p: Point | Box | Mask | VisualPrompt, object_id: int) -> VisualPrompt:
    """Point / Box / Mask / VisualPrompt -> VisualPrompt with its object id."""
    if isinstance(p, VisualPrompt):
        return VisualPrompt(p.kind, p.frame, tuple(p.coords), p.mask, object_id)
    if isinstance(p, Point):
        return VisualPrompt("point", p.frame, (p.x, p.y), None, object_id)
    if isinstance(p, Box):
        return VisualPrompt("box", p.frame, (p.x1, p.y1, p.x2, p.y2), None, object_id)
    if isinstance(p, Mask):
        return VisualPrompt("mask", p.frame, (), p.mask, object_id)
    raise TypeError(f"prompts: got {type(p).__name__}, expected Point, Box, Mask or VisualPrompt")


class ContextTooLongError(ValueError):
    """A conversation whose prompt no longer fits the language model's positions (start a new conversation)."""


def max_positions(model: UniPixel) -> int | None:
    """The language model's position limit (`max_position_embeddings` of its text config), or None if unknown."""
    config = getattr(getattr(model, "qwen", None), "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        limit = getattr(cfg, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def check_context(model: UniPixel, state: ChatState, batch: Batch, max_new_tokens: int) -> None:
    """Raise ContextTooLongError when the prompt plus `max_new_tokens` passes the model's position limit.

    Every turn feeds the whole conversation again (media, earlier turns, injected memory), so the prompt grows with
    each turn; past the limit the model would read positions it was never trained on, silently.
    """
    limit = max_positions(model)
    if limit is None:
        return
    n = int(batch.input_ids.shape[-1])
    if n + max_new_tokens > limit:
        raise ContextTooLongError(
            f"conversation too long: {len(state.turns)} earlier turn(s) make a prompt of {n} tokens, over the "
            f"model's limit of {limit - max_new_tokens} ({limit} positions minus max_new_tokens {max_new_tokens}); "
            "start a new conversation"
        )


def _messages(state, user_text: str, answer: str | None) -> list[dict]:
    """Chat-template messages: media in the first user message, history turns, the new turn."""
    turns = list(state.turns) + [(user_text, answer)]
    msgs = []
    for i, (u, a) in enumerate(turns):
        content = [{"type": state.kind}] if i == 0 else []
        content.append({"type": "text", "text": u})
        msgs.append({"role": "user", "content": content})
        if a is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return msgs


# Resizing on at every call, so media of any size enter within the processor's pixel budget whatever a folder's
# saved processor settings say (a release saves do_resize=false).
RESIZE_KWARGS = {"images_kwargs": {"do_resize": True}, "videos_kwargs": {"do_resize": True}}


def build_batch(
    model: UniPixel,
    state: ChatState,
    user_text: str,
    answer: str | None,
    prompts: list[VisualPrompt],
    memory: list[MemoryRef],
    assistant_prefix: str = "",
) -> Batch:
    """Tokenise history + this turn (answer teacher-forced, or a generation prompt) into a one-sample Batch.

    With no answer, `assistant_prefix` is appended after the generation prompt (an answer forced to start with it).
    The conversation's `processor_kwargs` (a pixel budget, say) go to the processor call.
    """
    proc = model.processor
    text = proc.apply_chat_template(
        _messages(state, user_text, answer), tokenize=False, add_generation_prompt=answer is None
    )
    if answer is None:
        text += assistant_prefix
    media = state.media
    kwargs = getattr(state, "processor_kwargs", None) or RESIZE_KWARGS
    if state.kind == "image":
        enc = proc(text=[text], images=[media[0]], return_tensors="pt", **kwargs)
    else:
        enc = proc(text=[text], videos=[media], return_tensors="pt", **kwargs)
    ids = enc["input_ids"]
    batch = Batch(
        input_ids=ids,
        attention_mask=enc["attention_mask"],
        labels=torch.full_like(ids, -100),
        mm_token_type_ids=enc["mm_token_type_ids"],
        frames=[media],
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        pixel_values_videos=enc.get("pixel_values_videos"),
        video_grid_thw=enc.get("video_grid_thw"),
        second_per_grid_ts=enc.get("second_per_grid_ts"),
        prompts=[list(prompts)],
        memory=[list(memory)],
    )
    return batch.to(model.new_token_embed.device)


@torch.no_grad()
def generate(model: UniPixel, batch: Batch, max_new_tokens: int) -> tuple[str, Batch]:
    """Greedy decoding without a KV cache (the <|ref|>/<|mem|> embeddings are rebuilt each step); neither is emitted."""
    tok = model.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    banned = [model.token_ids[REF], model.token_ids[MEM]]
    new: list[int] = []
    for _ in range(max_new_tokens):
        out = model.forward(batch, decode_masks=False)
        logits = out.logits[0, -1].float()
        logits[banned] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == eos:
            break
        new.append(nxt)
        batch = append_tokens(batch, [nxt])
    return tok.decode(new, skip_special_tokens=False), batch


def _seg_masks(model, batch: Batch) -> list[torch.Tensor]:
    """(T, H, W) bool masks of every <|seg|> in the batch's single sample, in text order (teacher-forced pass)."""
    out = model.forward(batch)
    return [m.cpu() for m in (out.pred_masks[0] > 0)]


def _free_id(bank: ObjectMemoryBank, taken: list[int]) -> int:
    """The smallest object id >= 0 used neither in the bank nor in `taken`."""
    k = 0
    while k in bank or k in taken:
        k += 1
    return k


def _memory_refs(bank: ObjectMemoryBank, object_ids: list[int]) -> tuple[ObjectMemoryBank, list[MemoryRef]]:
    """A bank restricted to `object_ids` and the MemoryRefs of its preamble, in text order."""
    sub = ObjectMemoryBank(bank.num_frames, {k: bank.masks[k] for k in sorted(object_ids) if k in bank})
    return sub, [MemoryRef(k, t, sub.pair_mask(k, t)) for k, t in sub.memory_refs()]


def check_media(media: torch.Tensor) -> None:
    """Raise unless media is (T, 3, H, W) uint8."""
    if not isinstance(media, torch.Tensor) or media.dim() != 4 or media.shape[1] != 3 or media.dtype != torch.uint8:
        got = tuple(media.shape) if isinstance(media, torch.Tensor) else type(media).__name__
        raise ValueError(f"media: got {got}, expected a (T, 3, H, W) uint8 tensor")


def _sam_frames(state) -> torch.Tensor:
    """The frames SAM segments in this conversation."""
    return state.sam_media if state.sam_media is not None else state.media


def _llm_view(state, bank: ObjectMemoryBank) -> ObjectMemoryBank:
    """The bank restricted to the LLM's frames (memory tokens pool LLM frames; the bank covers SAM frames)."""
    if state.llm_index is None:
        return bank
    return ObjectMemoryBank(len(state.llm_index), {k: m[state.llm_index] for k, m in bank.masks.items()})


def _decode(model, state, states: torch.Tensor, starts: list[int | None] | None = None) -> list[torch.Tensor]:
    """(T_sam, H, W) bool masks from <|seg|> states, one per state (`starts`: SAM frames to start from when the
    model propagates both ways; None = its best-supported frame); the conversation's `progress` follows SAM."""
    progress = getattr(state, "progress", None)
    frames, store = _sam_frames(state), getattr(state, "sam_cache", None)
    return list(model.decode_states(frames, states, start=starts, progress=progress, store=store, binary=True))


def check_prefix(assistant_prefix: str) -> None:
    """Raise unless a forced answer start is plain text: a <|seg|> there would be counted as an answer object but
    never decoded (ids and masks would mispair), and a <|ref|> / <|mem|> has no prompt or memory to fill it."""
    for token in SPECIAL_TOKENS:
        if token in assistant_prefix:
            raise ValueError(
                f"assistant_prefix: holds {token}, expected plain text (a forced prefix yields no mask or prompt)"
            )


def check_frames(media: torch.Tensor, sam_media: torch.Tensor | None, llm_index: list[int] | None) -> None:
    """Raise unless the SAM frames and the LLM-frame index agree with the LLM frames."""
    if sam_media is None and llm_index is None:
        return
    if sam_media is None or llm_index is None:
        raise ValueError(
            "sam_media / llm_index: give both (SAM frames and where the LLM frames sit in them) or neither"
        )
    check_media(sam_media)
    if len(llm_index) != media.shape[0] or any(not 0 <= i < sam_media.shape[0] for i in llm_index):
        raise ValueError(
            f"llm_index: got {list(llm_index)}, expected {media.shape[0]} indices in [0, {sam_media.shape[0] - 1}]"
        )
    if tuple(sam_media.shape[-2:]) != tuple(media.shape[-2:]):
        raise ValueError(f"sam_media: frames of {tuple(sam_media.shape[-2:])}, expected {tuple(media.shape[-2:])}")


@torch.no_grad()
def chat_turn(
    model: UniPixel,
    media: torch.Tensor,
    text: str,
    prompts: list,
    history: ChatState | None,
    max_new_tokens: int,
    kind: str | None,
    sam_media: torch.Tensor | None = None,
    llm_index: list[int] | None = None,
    use_cache: bool = True,
    assistant_prefix: str = "",
    memory: dict[int, torch.Tensor] | None = None,
    processor_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChatResult:
    """One user turn: returns a ChatResult (answer, masks of this turn by object id, bank, updated state).

    The turn runs on a fork of `history` and updates `history` in place only when it completes (the result's
    `state` is `history` then): an error or an interrupt leaves it as it was. `memory` puts given masks (object
    id -> (T_sam, H, W)) into the bank before the turn, without pre-filling (the ground-truth memory of
    VideoRefer-Bench); `assistant_prefix` forces the answer's start (it is part of the returned answer);
    `processor_kwargs` go to every processor call of the conversation (a pixel budget).
    """
    check_prefix(assistant_prefix)  # before any state changes
    was = model.training
    model.eval()
    try:
        if history is None:
            check_media(media)
            check_frames(media, sam_media, llm_index)
            kind = kind or ("image" if media.shape[0] == 1 else "video")
            if kind not in ("image", "video"):
                raise ValueError(f"kind: got {kind!r}, expected 'image' or 'video'")
            n_sam = int((sam_media if sam_media is not None else media).shape[0])
            state = ChatState(media=media, kind=kind, bank=ObjectMemoryBank(n_sam))
            state.sam_media, state.llm_index = sam_media, list(llm_index) if llm_index is not None else None
        elif not isinstance(history, ChatState):
            raise TypeError(
                f"history: got {type(history).__name__}, expected the ChatState of the previous turn (ChatResult.state)"
            )
        else:
            state = history.fork()  # the turn's working copy: published into history once it completes
        if processor_kwargs is not None:
            state.processor_kwargs = processor_kwargs
        if progress is not None:
            state.progress = progress
        for oid, m in (memory or {}).items():
            state.bank.put(int(oid), torch.as_tensor(m).bool())
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text: got an empty message, expected a question or instruction")
        T = int(state.media.shape[0])
        if count_ref(text) != len(prompts):
            raise ValueError(f"text has {count_ref(text)} {REF} tokens but {len(prompts)} prompts were given")
        ids: list[int] = []
        vps: list[VisualPrompt] = []
        for p in prompts:
            oid = getattr(p, "object_id", None)
            oid = _free_id(state.bank, ids) if oid is None else oid
            ids.append(oid)
            vp = to_visual_prompt(p, oid)
            if not 0 <= vp.frame < T:
                raise ValueError(f"prompt frame: got {vp.frame}, expected 0 <= frame < {T}")
            vps.append(vp)
        variant = model.cfg.memory.variant
        masks: dict[int, torch.Tensor] = {}
        user_text, turn_prompts, turn_memory, prefix = text, vps, [], None
        if vps and variant == "memory_bank":
            # pre-filling as released: the question with `[k] <|ref|>` markers plus the pre-filling instruction,
            # and the answer fixed by the prompts (`[k] <|seg|>`), teacher-forced
            prefill_text = prefill_request(tag_refs(text, ids))
            pre = build_batch(model, state, prefill_text, prefill_answer(ids), state.prompts + vps, state.memory)
            check_context(model, state, pre, 0)  # teacher-forced: it generates nothing
            # bidirectional propagation starts from each prompt's own frame (a SAM frame)
            starts = [state.llm_index[vp.frame] if state.llm_index is not None else vp.frame for vp in vps]
            caches: list = []
            prefill_states = model.seg_states(pre, state.visual_cache, cache=caches if use_cache else None)
            prefix = PrefixCache(pre, caches[0]) if use_cache else None
            prefill_states = prefill_states[-len(ids) :]
            for oid, m in zip(ids, _decode(model, state, prefill_states, starts)):
                state.bank.put(oid, m)
                masks[oid] = m
            sub, turn_memory = _memory_refs(_llm_view(state, state.bank), ids)
            user_text = inject(text, sub, state.kind, ids)
            turn_prompts = []
            state.injected.update(ids)
        elif vps and variant in ("ref_seg", "ref_seg_pool"):
            # ref_seg_pool pools under the prompt-side <|seg|> masks inside the model's forward (same text)
            user_text = text.replace(REF, REF + SEG)
        if variant == "memory_bank":
            # later turns may name bank objects that are not yet in the context: inject them now
            named = [k for k in object_ids_in(user_text) if k in state.bank and k not in state.injected]
            if named:
                sub, extra_refs = _memory_refs(_llm_view(state, state.bank), named)
                pre = sub.preamble(state.kind)
                if pre:
                    user_text = f"{pre}\n{user_text}"
                    turn_memory = extra_refs + turn_memory
                state.injected.update(named)
        batch = build_batch(
            model, state, user_text, None, state.prompts + turn_prompts, state.memory + turn_memory, assistant_prefix
        )
        check_context(model, state, batch, max_new_tokens)
        n_user = count_seg(user_text)
        if variant == "ref_seg_pool":
            # the pooled second LLM pass lives in forward: generate and decode through it (uncached)
            answer, _ = generate(model, batch, max_new_tokens)
            answer = assistant_prefix + answer
            full = build_batch(
                model, state, user_text, answer, state.prompts + turn_prompts, state.memory + turn_memory
            )
            n_before = sum(count_seg(u) + count_seg(a) for u, a in state.turns)
            segs = _seg_masks(model, full)[n_before:]
        else:
            gen = greedy_generate(
                model, batch, max_new_tokens, use_cache=use_cache, visual_cache=state.visual_cache, prefix=prefix
            )
            answer = assistant_prefix + gen.text
            prompt_states = gen.prompt_seg_states[gen.prompt_seg_states.shape[0] - n_user :] if n_user else None
            states = gen.seg_states if prompt_states is None else torch.cat([prompt_states, gen.seg_states])
            segs = _decode(model, state, states)
        n_answer = count_seg(answer)
        if variant in ("ref_seg", "ref_seg_pool") and n_user:
            for oid, m in zip(ids, segs[:n_user]):
                state.bank.put(oid, m)
                masks[oid] = m
        answer_ids = parse_prefill(answer)
        if len(answer_ids) != n_answer:
            answer_ids = []
            for _ in range(n_answer):
                answer_ids.append(_free_id(state.bank, answer_ids))
        for oid, m in zip(answer_ids, segs[n_user:]):
            state.bank.put(oid, m)
            masks[oid] = m
        state.turns.append((user_text, answer))
        state.prompts = state.prompts + turn_prompts
        state.memory = state.memory + turn_memory
        if history is not None:
            history.publish(state)
            state = history
        return ChatResult(answer, masks, state.bank, state, user_text)
    finally:
        model.train(was)
