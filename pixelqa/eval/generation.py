"""The `answer_fn`s that turn a protocol's `Request` into a `Prediction` with a model.

predictor_answer_fn(model)   the inference API (`pixelqa.predict.Predictor`): free greedy generation, the
                             request's LLM / SAM frames, forced answer prefix, ground-truth memory, the
                             benchmark's pixel budget; the official protocol. What a model's chat cannot take
                             is listed in the provenance's `departures`.
chat_answer_fn(model)        `UniPixel.chat` on the LLM frames: a stand-in while the inference API is missing
                             (SAM masks only on the LLM frames, copied to each SAM frame from the nearest LLM
                             frame). Not the official protocol: runs using it are marked so in their provenance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pixelqa.data import masks as rle_masks
from pixelqa.data.budgets import TOKEN_PIXELS, PixelBudget
from pixelqa.eval.official import Prediction, Request
from pixelqa.prompt_format import PREFILL_INSTRUCTION, REF


def _media(request: Request, frames: list[int]) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames of the request's sample."""
    rgb = request.sample.decode_frames(frames)  # (T, H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).contiguous()


def _chat_prompts(request: Request) -> list:
    """The request's point / box prompts as normalised chat prompts on LLM-frame positions."""
    from pixelqa.model.chat import Box, Point

    h, w = request.sample.media.size
    out = []
    for p in request.prompts:
        frame = request.llm_frames.index(p.frame) if p.frame in request.llm_frames else 0
        c = p.coords or []
        if p.type == "point":
            out.append(Point(c[0] / w, c[1] / h, frame=frame))
        elif p.type == "box":
            out.append(Box(c[0] / w, c[1] / h, c[2] / w, c[3] / h, frame=frame))
        else:
            raise ValueError(f"prompt type: got {p.type!r}, expected 'point' or 'box' for a chat stand-in")
    return out


def _to_sam_frames(mask: torch.Tensor, request: Request) -> np.ndarray:
    """(T_llm, h, w) chat masks -> (len(sam_frames), H, W) bool at the source size, nearest LLM frame per SAM frame."""
    h, w = request.sample.media.size
    m = mask.detach().float().cpu()
    if m.shape[-2:] != (h, w):
        m = torch.nn.functional.interpolate(m[:, None], size=(h, w), mode="nearest")[:, 0]
    llm = np.asarray(request.llm_frames)
    pick = [int(np.argmin(np.abs(llm - f))) for f in request.sam_frames]
    return (m[pick] > 0.5).numpy()


def chat_answer_fn(model: Any, max_new_tokens: int | None = None) -> Callable[[Request], Prediction]:
    """An answer_fn over `model.chat` (see the module docstring for what it leaves out)."""

    def answer(request: Request) -> Prediction:
        media = _media(request, request.llm_frames)
        text, prompts = request.text, []
        if request.prompts:
            prompts = _chat_prompts(request)
            text = (request.prefill_text or "").replace(PREFILL_INSTRUCTION, "").strip()
        cap = min(request.max_new_tokens, max_new_tokens) if max_new_tokens else request.max_new_tokens
        kwargs: dict[str, Any] = {}
        supported = _supported(model.chat)
        if request.assistant_prefix and "assistant_prefix" in supported:
            kwargs["assistant_prefix"] = request.assistant_prefix
        if request.memory and "memory" in supported:
            kwargs["memory"] = memory_masks(request, request.llm_frames)
        if "processor_kwargs" in supported:
            kwargs["processor_kwargs"] = pixel_budget(request)
        result = model.chat(media, text, prompts, max_new_tokens=cap, **kwargs)
        masks = [_to_sam_frames(result.masks[k], request) for k in sorted(result.masks)]
        return Prediction(continuation(result.text, request.assistant_prefix), masks)

    return answer


def tags_to_refs(text: str, data_ids: list[int]) -> str:
    """The text with object i's first `[data_ids[i]]` tag turned into `[i] <|ref|>` and its other tags into `[i]`
    (the shards number objects from 1, the released model from 0 in prompt order); when a tag is missing, the
    tags are left and no <|ref|> is placed (the Predictor then puts `[i] <|ref|>` before the text)."""
    import re

    if any(f"[{d}]" not in text for d in data_ids):
        return text
    mapping = {d: i for i, d in enumerate(data_ids)}
    seen: set[int] = set()

    def swap(m: re.Match) -> str:
        d = int(m.group(1))
        if d not in mapping:
            return m.group(0)
        if d in seen:
            return f"[{mapping[d]}]"
        seen.add(d)
        return f"[{mapping[d]}] {REF}"

    return re.sub(r"\[(\d+)\]", swap, text)


def _predictor_prompts(request: Request) -> tuple[list, list[int]]:
    """(point / box prompts as model prompts on positions among the SAM frames, their data object ids)."""
    if not request.prompts:
        return [], []
    sub = Request(request.sample, request.sam_frames, request.sam_frames, request.text, request.prompts)
    return _chat_prompts(sub), [p.object_id for p in request.prompts]


def memory_masks(request: Request, frames: list[int]) -> dict[int, torch.Tensor]:
    """The request's ground-truth memory as {object id: (len(frames), H, W) bool}, empty on unannotated frames."""
    h, w = request.sample.media.size
    out = {}
    for oid, by_frame in sorted(request.memory.items()):
        m = torch.zeros(len(frames), h, w, dtype=torch.bool)
        for f, rle in by_frame.items():
            if f in frames:
                m[frames.index(f)] = torch.from_numpy(rle_masks.decode(rle).astype(bool))
        out[int(oid)] = m
    return out


def pixel_budget(request: Request) -> dict:
    """The processor arguments of the request's visual-token budget (per image, or per video frame)."""
    lo, hi = (int(v) * TOKEN_PIXELS for v in request.token_budget)
    kind = request.sample.media.kind
    if kind == "image":
        return PixelBudget(image_min_pixels=lo, image_max_pixels=hi).call_kwargs("image")
    return PixelBudget(frame_min_pixels=lo, frame_max_pixels=hi).call_kwargs("video")


def continuation(answer: str, prefix: str) -> str:
    """The generated text after a forced prefix (the answer as the model returns it starts with the prefix)."""
    return answer[len(prefix) :] if prefix and answer.startswith(prefix) else answer


def _supported(chat: Callable) -> set[str]:
    """Which of the protocol's chat arguments a model's `chat` takes."""
    params = inspect.signature(chat).parameters
    return {k for k in ("assistant_prefix", "memory", "processor_kwargs") if k in params}


def predictor_answer_fn(
    model: Any, max_new_tokens: int | None = None, budget: bool = True
) -> Callable[[Request], Prediction]:
    """An answer_fn over `pixelqa.predict.Predictor(model).run(...)`: media = the request's SAM frames (the
    Predictor shows the LLM 16 of them, uniform with both ends and the prompt frame forced in), the point / box
    prompts pre-filled as the model's chat does, the forced answer prefix, the ground-truth memory injected as
    memory, the benchmark's pixel budget (`budget=False` keeps the model's default sizes: a debugging option,
    recorded) and `max_new_tokens` per request. Anything the model cannot take is listed in `departures`."""
    from pixelqa.predict import Predictor, media_from_tensor

    predictor = Predictor(model)
    supported = _supported(model.chat)
    departures: set[str] = set()
    if not budget:
        departures.add("pixel budget of the benchmark not applied (the model's default sizes)")

    def answer(request: Request) -> Prediction:
        media = media_from_tensor(_media(request, request.sam_frames), request.sample.media.kind)
        prompts, ids = _predictor_prompts(request)
        text = tags_to_refs(request.text, ids) if ids else request.text
        kwargs: dict[str, Any] = {}
        if request.assistant_prefix:
            if "assistant_prefix" in supported:
                kwargs["assistant_prefix"] = request.assistant_prefix
            else:
                departures.add(f"answer prefix {request.assistant_prefix!r} not forced (the model cannot)")
        if request.memory:
            if "memory" in supported:
                kwargs["memory"] = memory_masks(request, request.sam_frames)
            else:
                departures.add("ground-truth memory not given (the model's chat takes no memory)")
        if budget:
            if "processor_kwargs" in supported:
                kwargs["processor_kwargs"] = pixel_budget(request)
            else:
                departures.add("pixel budget of the benchmark not applied (the model's chat takes none)")
        cap = request.max_new_tokens
        predictor.max_new_tokens = min(cap, max_new_tokens) if max_new_tokens else cap
        out = predictor.run(media, text, prompts, **kwargs)
        h, w = request.sample.media.size
        masks = []
        for k in sorted(out.masks):
            m = out.masks[k].float()
            if tuple(m.shape[-2:]) != (h, w):
                m = torch.nn.functional.interpolate(m[:, None], size=(h, w), mode="nearest")[:, 0]
            masks.append((m > 0.5).numpy())
        return Prediction(continuation(out.answer, request.assistant_prefix), masks)

    answer.departures = departures  # type: ignore[attr-defined]
    return answer


def departures_of(answer_fn: Callable) -> list[str]:
    """The protocol departures an answer_fn recorded so far (sorted), [] when it keeps none."""
    return sorted(getattr(answer_fn, "departures", ()))


def default_answer_fn(model: Any, max_new_tokens: int | None = None) -> tuple[Callable[[Request], Prediction], str]:
    """(answer_fn, generation label): the Predictor when the inference API is installed, else the chat stand-in
    (`max_new_tokens` caps the chat stand-in's answers: a debugging limit, recorded in the provenance)."""
    try:
        return predictor_answer_fn(model, max_new_tokens), "pixelqa.predict.Predictor (official protocol)"
    except ImportError:
        label = "UniPixel.chat stand-in (inference API missing; not the official protocol)"
        return chat_answer_fn(model, max_new_tokens), label
