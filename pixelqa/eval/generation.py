"""The `answer_fn`s that turn a protocol's `Request` into a `Prediction` with a model.

predictor_answer_fn(model)   the inference API (`pixelqa.predict.Predictor`): free greedy generation, the
                             request's LLM / SAM frames, forced answer prefix, ground-truth memory; the
                             official protocol. Request fields the Predictor does not accept are refused.
chat_answer_fn(model)        `UniPixel.chat` on the LLM frames: a stand-in while the inference API is missing
                             (no forced prefix, no ground-truth memory, SAM masks only on the LLM frames,
                             copied to each SAM frame from the nearest LLM frame). Not the official protocol:
                             runs using it are marked so in their provenance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pixelqa.eval.official import Prediction, Request
from pixelqa.prompt_format import PREFILL_INSTRUCTION


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
        budget = min(request.max_new_tokens, max_new_tokens) if max_new_tokens else request.max_new_tokens
        result = model.chat(media, text, prompts, max_new_tokens=budget)
        masks = [_to_sam_frames(result.masks[k], request) for k in sorted(result.masks)]
        return Prediction(result.answer, masks)

    return answer


# Request fields a Predictor must accept (as keyword arguments of `run`) for the protocols that set them
_OPTIONAL = ("llm_frames", "sam_frames", "assistant_prefix", "memory", "max_new_tokens", "prefill_text")


def predictor_answer_fn(model: Any) -> Callable[[Request], Prediction]:
    """An answer_fn over `pixelqa.predict.Predictor(model).run(media, text, prompts, history, ...)`."""
    from pixelqa.predict import Predictor  # type: ignore[attr-defined]

    predictor = Predictor(model)
    accepted = set(inspect.signature(predictor.run).parameters)

    def answer(request: Request) -> Prediction:
        frames = list(range(request.sample.media.num_frames))
        kwargs: dict[str, Any] = {}
        for name in _OPTIONAL:
            value = getattr(request, name)
            if value in (None, "", {}, []):
                continue
            if name not in accepted:
                raise TypeError(
                    f"Predictor.run: has no {name!r} argument, which the {request.sample.source} protocol needs"
                )
            kwargs[name] = value
        media = _media(request, frames)
        prompts = _chat_prompts(request) if request.prompts else []
        out = predictor.run(media, request.text, prompts, None, **kwargs)
        text = getattr(out, "text", getattr(out, "answer", ""))
        masks = getattr(out, "masks", [])
        if isinstance(masks, dict):
            masks = [masks[k] for k in sorted(masks)]
        return Prediction(str(text), [np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m, bool) for m in masks])

    return answer


def default_answer_fn(model: Any) -> tuple[Callable[[Request], Prediction], str]:
    """(answer_fn, generation label): the Predictor when the inference API is installed, else the chat stand-in."""
    try:
        return predictor_answer_fn(model), "pixelqa.predict.Predictor (official protocol)"
    except ImportError:
        return chat_answer_fn(model), "UniPixel.chat stand-in (inference API missing; not the official protocol)"
