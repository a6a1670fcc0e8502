"""The inference API: `Predictor(model).run(media, text, prompts, history)` -> `Prediction`.

One call is one user turn. The first turn fixes the frames: SAM sees every frame given (`media`), the LLM 16 of
them, uniform with both ends and every prompt frame forced in (`pixelqa.predict.frames`). Prompts are the model's
`Point` / `Box` / `Mask` with normalised coordinates on a position among the media's frames; each gets an object
id (the next free one unless it names its own), is placed in the text as `[k] <|ref|>` when the text holds no
`<|ref|>`, and its object is segmented on every frame and put in the memory bank (the model's pre-fill). Later
turns pass the previous `Prediction` as `history` and may name memory objects (`What is [0] holding?`).

A `Prediction` is a value: a turn runs on a copy of its history's conversation, so the same `Prediction` may be
passed as `history` again (a branch from that turn), and a turn that raises or is interrupted changes nothing.
Its `masks` and `memory` are its own tensors (changing them in place changes no other turn).
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import operator
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelqa.model.chat import Box, ContextTooLongError, Mask, Point
from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.frames import LLM_FRAMES, llm_positions
from pixelqa.predict.media import Media, aspect_problem, media_from_tensor, media_warnings, read_media
from pixelqa.predict.progress import progress_bar
from pixelqa.predict.prompts import place_refs
from pixelqa.prompt_format import SPECIAL_TOKENS, object_ids_in

if TYPE_CHECKING:
    from pixelqa.model.unipixel import UniPixel


@dataclass
class Prediction:
    """One turn's result; pass it as `history` to the next turn of the same conversation.

    It is not changed by later turns: passing it as `history` again continues from this turn (a branch).
    """

    answer: str
    text: str  # the user text with its <|ref|> placed
    model_text: str  # the user text as fed to the model (memory injected)
    masks: dict[int, torch.Tensor]  # object id -> (T, H, W) bool on every media frame, objects of this turn
    memory: dict[int, torch.Tensor]  # every object of the memory bank after this turn, (T, H, W) bool
    media: Media
    llm_positions: list[int]  # positions among the media frames that the LLM sees
    sam_positions: list[int]  # positions SAM decoded (every frame, unless the model cannot take separate frames)
    prompts: list  # this turn's prompts with their object ids (positions among the media frames)
    state: object = field(repr=False, default=None)  # the model's ChatState
    timings: dict[str, float] = field(default_factory=dict)
    turn: int = 1
    model_info: dict = field(default_factory=dict, repr=False)  # where the model came from, its config (run.json)
    text_given: str = ""  # the user text exactly as given (before its <|ref|> were placed)


def _sam_progress_bar(total: int):
    """(callback, bar): a tqdm bar over the `total` frames SAM segments, fed by the model's progress(done, total)."""
    bar = progress_bar(True, total=total, desc="segmenting frames", unit="frame", leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    return update, bar


# the highest object id: outputs store id + 1 in a palette PNG (pixelqa.predict.outputs.id_map)
MAX_OBJECT_ID = 254


def _index(value, name: str, what: str) -> int:
    """An int of any integer type (numpy's too, not bool), or the error naming the argument."""
    if isinstance(value, bool):
        raise PredictInputError(f"{name}: got {value!r}, expected {what}")
    try:
        return operator.index(value)
    except TypeError:
        raise PredictInputError(f"{name}: got {value!r} ({type(value).__name__}), expected {what}") from None


def _as_prompt_list(prompts) -> list:
    """The turn's prompts as a list: None -> [], one Point / Box / Mask -> [it], a list or tuple as given."""
    if prompts is None:
        return []
    if isinstance(prompts, (Point, Box, Mask)):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise PredictInputError(
            f"prompts: got {type(prompts).__name__}, expected a list of Point / Box / Mask of pixelqa.model.chat"
        )
    return list(prompts)


def _normalised(p, i: int):
    """A copy of prompts[i] with an int frame (any integer type given), an int or None object id, a tensor mask."""
    if not isinstance(p, (Point, Box, Mask)):
        raise PredictInputError(
            f"prompts[{i}]: got {type(p).__name__}, expected Point, Box or Mask of pixelqa.model.chat"
        )
    frame = _index(p.frame, f"prompts[{i}].frame", "an integer frame index")
    k = p.object_id
    if k is not None:
        k = _index(k, f"prompts[{i}].object_id", f"an integer in [0, {MAX_OBJECT_ID}] or None")
        if not 0 <= k <= MAX_OBJECT_ID:
            raise PredictInputError(
                f"prompts[{i}].object_id: got {k}, expected an integer in [0, {MAX_OBJECT_ID}] (outputs store id + 1 "
                f"in a palette PNG) or None"
            )
    p = dataclasses.replace(p, frame=frame, object_id=k, **_coordinates(p, i))
    if isinstance(p, Mask) and not isinstance(p.mask, torch.Tensor):
        try:
            p = dataclasses.replace(p, mask=torch.as_tensor(p.mask))
        except (TypeError, ValueError, RuntimeError):
            raise PredictInputError(
                f"prompts[{i}].mask: got {type(p.mask).__name__}, expected an (H, W) bool tensor or array"
            ) from None
    return p


def _coordinates(p, i: int) -> dict[str, float]:
    """A Point's or Box's coordinates as floats (any real number type given: numpy's, a 0-d tensor), or the error
    naming the field; {} for a Mask."""
    names = ("x", "y") if isinstance(p, Point) else ("x1", "y1", "x2", "y2") if isinstance(p, Box) else ()
    out = {}
    for name in names:
        value = getattr(p, name)
        try:
            if isinstance(value, (str, bytes, bool)):  # float() would take "0.5"; a bool is no coordinate
                raise TypeError
            out[name] = float(value)
        except (TypeError, ValueError):
            raise PredictInputError(
                f"prompts[{i}].{name}: got {value!r} ({type(value).__name__}), expected a number in [0, 1]"
            ) from None
    return out


def _assign_ids(prompts: list, taken: set[int]) -> list:
    """Prompts with object ids: their own, else the smallest id used neither in memory nor by a prompt of this turn.

    Two prompts of one turn naming the same object id are refused (the second would replace the first's object);
    a prompt naming an id already in memory replaces that object.
    """
    prompts = [_normalised(p, i) for i, p in enumerate(prompts)]
    given: dict[int, int] = {}
    for i, p in enumerate(prompts):
        if p.object_id is None:
            continue
        if p.object_id in given:
            raise PredictInputError(
                f"prompts[{i}].object_id: got {p.object_id}, which prompts[{given[p.object_id]}] names too; expected "
                f"one prompt per object in a turn"
            )
        given[p.object_id] = i
    out, used = [], set(taken) | set(given)
    for p in prompts:
        k = p.object_id
        if k is None:
            k = 0
            while k in used:
                k += 1
            used.add(k)
        out.append(dataclasses.replace(p, object_id=k))
    return out


def _check_prompt(p, i: int, media: Media) -> None:
    """Raise unless a prompt's frame is a media frame, its coordinates are normalised and a mask has the frame size."""
    t = len(media.frame_ids)
    if not 0 <= p.frame < t:
        raise PredictInputError(f"prompts[{i}].frame: got {p.frame!r}, expected 0 <= frame < {t} (the media's frames)")
    if isinstance(p, Point) and not (0 <= p.x <= 1 and 0 <= p.y <= 1):
        raise PredictInputError(f"prompts[{i}]: got point ({p.x}, {p.y}), expected normalised coordinates in [0, 1]")
    if isinstance(p, Box) and not (0 <= p.x1 < p.x2 <= 1 and 0 <= p.y1 < p.y2 <= 1):
        raise PredictInputError(
            f"prompts[{i}]: got box ({p.x1}, {p.y1}, {p.x2}, {p.y2}), expected 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"
        )
    if isinstance(p, Mask) and tuple(p.mask.shape) != media.size:
        raise PredictInputError(
            f"prompts[{i}].mask: got shape {tuple(p.mask.shape)}, expected the media's (H, W) = {media.size}"
        )
    if isinstance(p, Mask) and not bool(p.mask.any()):  # the model would find no token cell to prompt with
        raise PredictInputError(f"prompts[{i}].mask: got an empty mask (no pixel set), expected at least one pixel")


def _check_memory(memory: dict | None, media: Media) -> dict[int, torch.Tensor]:
    """Given memory as {id: (T, H, W) bool} on every media frame; raise naming the id when it is malformed."""
    out: dict[int, torch.Tensor] = {}
    want = (len(media.frame_ids), *media.size)
    for k, m in (memory or {}).items():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= MAX_OBJECT_ID:
            raise PredictInputError(f"memory: got object id {k!r}, expected an integer in [0, {MAX_OBJECT_ID}]")
        k = int(k)
        m = torch.as_tensor(m)
        if tuple(m.shape) != want:
            raise PredictInputError(
                f"memory[{k}]: got masks of shape {tuple(m.shape)}, expected (frames, H, W) = {want} on every frame"
            )
        out[k] = m.bool().cpu()
    return out


def _on_all_frames(masks: torch.Tensor, positions: list[int], total: int) -> torch.Tensor:
    """(len(positions), H, W) masks placed at `positions` of (total, H, W) (empty elsewhere): always a new tensor,
    so a Prediction's masks never alias the memory bank's (or another Prediction's)."""
    if masks.shape[0] == total and positions == list(range(total)):
        return masks.bool().cpu().clone()
    out = torch.zeros(total, *masks.shape[1:], dtype=torch.bool)
    out[positions] = masks.bool().cpu()
    return out


def _no_flag(exc: PredictInputError) -> PredictInputError:
    """The error of a helper shared with the CLI naming the Python argument (`text: ...`) instead of its flag."""
    return PredictInputError(str(exc).removeprefix("--"))


def describe_model(model: UniPixel) -> dict:
    """run.json's model entry for a model built in memory (load_model gives the path and format when loaded)."""
    first = next(model.parameters())
    return {"format": "in-memory", "device": str(first.device), "dtype": model.cfg.dtype, "config": asdict(model.cfg)}


class Predictor:
    """Runs UniPixel turns on media: frame choice, prompt numbering and placement, memory checks, timings."""

    def __init__(
        self,
        model: UniPixel,
        llm_frames: int = LLM_FRAMES,
        max_new_tokens: int = 64,
        progress: bool = False,
        model_info: dict | None = None,
    ) -> None:
        if not callable(getattr(model, "chat", None)):
            raise TypeError(
                f"model: got {type(model).__name__}, expected a UniPixel (pixelqa.model, or load_model's first result)"
            )
        llm_frames = _index(llm_frames, "llm_frames", "an integer >= 1")
        if llm_frames < 1:
            raise PredictInputError(f"llm_frames: got {llm_frames}, expected an integer >= 1")
        max_new_tokens = _index(max_new_tokens, "max_new_tokens", "an integer >= 0")
        if max_new_tokens < 0:
            raise PredictInputError(f"max_new_tokens: got {max_new_tokens}, expected an integer >= 0")
        self.model = model
        self.llm_frames = llm_frames
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.model_info = model_info or describe_model(model)
        # separate SAM frames arrive with the model's `sam_media` / `llm_index` arguments; until then SAM decodes
        # the LLM frames only
        self.separate_sam = "sam_media" in inspect.signature(model.chat).parameters

    def run(
        self,
        media: Media | torch.Tensor | str | Path | None,
        text: str,
        prompts: list | None = None,
        history: Prediction | None = None,
        assistant_prefix: str = "",
        memory: dict[int, torch.Tensor] | None = None,
        processor_kwargs: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """One user turn: the answer, masks of this turn's objects on every frame, and the memory bank.

        A later turn passes the previous turn's Prediction as `history` and `media=None` (the conversation keeps
        the first turn's media); `history` is not changed, so passing it again branches from that turn. prompts
        are Point / Box / Mask (one, or a list), each naming at most one object id in [0, 254] per turn.
        assistant_prefix forces the answer's start (it begins the returned answer); memory (object id -> (T, H, W)
        bool masks on every media frame) enters the bank before the turn without pre-filling, so the text may name
        those ids (ground-truth memory); processor_kwargs (`PixelBudget.call_kwargs(kind)`) go to every processor
        call of the conversation; progress(done, total) follows SAM's frames (a progress bar on long videos).
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        if history is not None:
            if not isinstance(history, Prediction):
                raise PredictInputError(
                    f"history: got {type(history).__name__}, expected the Prediction of the previous turn (what "
                    f"Predictor.run returned)"
                )
            if media is not None and media is not history.media:
                raise PredictInputError(
                    f"media: got {type(media).__name__} together with history, expected None on a later turn (the "
                    f"conversation keeps its first turn's media; start a new conversation for new media)"
                )
            media = history.media
            llm_pos = history.llm_positions
            bank = history.state.bank
        else:
            if media is None:
                raise PredictInputError("media: got None, expected frames or a path on the first turn")
            if isinstance(media, (str, Path)):
                try:
                    media = read_media(media)
                except PredictInputError as exc:
                    raise _no_flag(exc) from None
                for line in media_warnings(media.info):  # damage is reported (run.json keeps the counts too)
                    warnings.warn(line, stacklevel=2)
            elif isinstance(media, torch.Tensor):
                media = media_from_tensor(media)
            elif not isinstance(media, Media):
                raise PredictInputError(f"media: got {type(media).__name__}, expected a Media, a tensor or a path")
            problem = aspect_problem(*media.size)  # a Media built by hand: the model's processor would refuse it
            if problem is not None:
                raise PredictInputError(f"media: {media.info.path!r} {problem}")
            bank, llm_pos = None, None
        timings["read_s"] = time.perf_counter() - started
        if not isinstance(assistant_prefix, str):
            raise PredictInputError(f"assistant_prefix: got {type(assistant_prefix).__name__}, expected a str")
        for token in SPECIAL_TOKENS:
            if token in assistant_prefix:  # the model's own check (chat.check_prefix), as a user error
                raise PredictInputError(
                    f"assistant_prefix: holds {token}, expected plain text (a forced prefix yields no mask or prompt)"
                )
        given = _check_memory(memory, media)
        taken = (set(bank.masks) if bank is not None else set()) | set(given)
        prompts = _assign_ids(_as_prompt_list(prompts), taken)
        for i, p in enumerate(prompts):
            _check_prompt(p, i, media)
        ids = [p.object_id for p in prompts]
        if not isinstance(text, str):
            raise PredictInputError(f"text: got {type(text).__name__}, expected a str")
        given_text = text
        try:
            text = place_refs(text, ids)
        except PredictInputError as exc:
            raise _no_flag(exc) from None
        in_memory = (set(bank.masks) if bank is not None else set()) | set(given)
        for k in object_ids_in(text):
            if k not in ids and k not in in_memory:
                held = ", ".join(f"[{i}]" for i in sorted(in_memory)) or "nothing yet"
                raise PredictInputError(f"text: names object [{k}], which is not in memory (memory holds {held})")
        if llm_pos is None:
            llm_pos = llm_positions(len(media.frame_ids), [p.frame for p in prompts], self.llm_frames)
        for i, p in enumerate(prompts):
            if p.frame not in llm_pos:
                raise PredictInputError(
                    f"prompts[{i}].frame: got {p.frame}, but this conversation's LLM frames are {llm_pos}; a later "
                    f"turn can only prompt on those"
                )
        on_llm = [dataclasses.replace(p, frame=llm_pos.index(p.frame)) for p in prompts]
        kwargs = dict(
            media=media.frames[llm_pos],
            text=text,
            prompts=on_llm,
            # a copy: the model updates it in place, and `history` stays the turn it was (a branch point)
            history=history.state.fork() if history is not None else None,
            max_new_tokens=self.max_new_tokens,
            kind=media.kind,
        )
        if self.separate_sam:
            kwargs.update(sam_media=media.frames, llm_index=list(llm_pos))
        sam_pos = list(range(len(media.frame_ids))) if self.separate_sam else list(llm_pos)
        # only the arguments a caller set reach the model, so a model without them still runs plain turns
        if assistant_prefix:
            kwargs["assistant_prefix"] = assistant_prefix
        if given:
            kwargs["memory"] = {k: m[sam_pos] for k, m in given.items()}
        if processor_kwargs is not None:
            kwargs["processor_kwargs"] = processor_kwargs
        bar = None
        if progress is None and self.progress:
            progress, bar = _sam_progress_bar(len(sam_pos))
        if progress is not None:
            kwargs["progress"] = progress
        t0 = time.perf_counter()
        try:
            result = self.model.chat(**kwargs)  # inputs are checked above: an error in here is not the user's
        except ContextTooLongError as exc:  # but a conversation grown past the model's positions is: one line
            if history is None:  # no conversation yet: the text (with the media) is what is too long
                raise PredictInputError(self._too_long(exc, given_text, len(llm_pos))) from exc
            raise PredictInputError(f"history: {exc}") from exc  # the cause: callers may add their own advice
        finally:
            if bar is not None:
                bar.close()
        timings["model_s"] = time.perf_counter() - t0
        total = len(media.frame_ids)
        masks = {k: _on_all_frames(m, sam_pos, total) for k, m in sorted(result.masks.items())}
        memory = {k: _on_all_frames(m, sam_pos, total) for k, m in sorted(result.bank.masks.items())}
        timings["total_s"] = time.perf_counter() - started  # this call only: a CLI's read and load are apart
        return Prediction(
            answer=result.text,
            text=text,
            model_text=result.user_text,
            masks=masks,
            memory=memory,
            media=media,
            llm_positions=list(llm_pos),
            sam_positions=sam_pos,
            prompts=prompts,
            state=result.state,
            timings=timings,
            turn=history.turn + 1 if history is not None else 1,
            model_info={**self.model_info, "config": self._config()},
            text_given=given_text,
        )

    def _config(self) -> dict:
        """run.json's model config as run: the model's (switches set since load, such as propagation), with the
        preset and tiny sizes as load_model recorded them (a released folder's sizes come from its config.json, not
        from the preset its loader is built with)."""
        config = asdict(self.model.cfg)
        recorded = self.model_info.get("config")
        for key in ("preset", "tiny"):
            if isinstance(recorded, dict) and key in recorded:
                config[key] = recorded[key]
        return config

    def _too_long(self, exc: ContextTooLongError, text: str, frames: int) -> str:
        """The one-line error of a first turn whose prompt passes the model's positions: the text's share and the
        rest's (media, prompts, chat template), from the numbers the model's message gives."""
        found = re.search(r"prompt of (\d+) tokens, over the model's limit of (\d+)", str(exc))
        try:
            n_text = len(self.model.tokenizer(text, add_special_tokens=False).input_ids)
        except Exception:  # noqa: BLE001  (the share is a courtesy; the refusal stands without it)
            n_text = None
        if found is None or n_text is None:
            return f"text: too long for the model ({exc}); expected a shorter text or fewer frames (llm_frames)"
        n, limit = int(found[1]), int(found[2])
        return (
            f"text: too long for the model: the prompt is {n} tokens ({n_text} of them the text, {n - n_text} the "
            f"media's {frames} LLM frame(s), prompts and chat template), over the limit of {limit}; "
            "expected a shorter text (or fewer frames for the LLM: llm_frames)"
        )
