"""Every benchmark as its official script runs it: which frames and prompt the model gets (`Request`), how one
generated answer is scored (`score` -> a JSON record) and how records become the paper's rows (`aggregate`).

Generation is not done here: a protocol hands a `Request` to one callable, `answer_fn(request) -> Prediction`
(the inference API, `pixelqa.predict.Predictor`, provides it; tests pass their own), and scores what comes back.
So every protocol is checked on predictions built by hand, and any model can be scored the same way.

    get_official(benchmark) -> Protocol          list_protocols(): the registered benchmark names
    get_official("reasonseg+exclude_ignore")     a protocol with named switches on (departures from the official
                                                 run, docs/departures.md; the suite file's `protocol:` takes this)
    @register_protocol("name")                   a new benchmark (a Protocol subclass taking no arguments, or
    register_protocol("name", factory)           any factory); a VideoSegProtocol or ImageSegProtocol named after
                                                 its source is also scored teacher-forced (`eval.benchmark=name`;
                                                 `teacher_forced_names`, docs/extending.md)
    Request(...)      frames (positions in sample.media.frames) for the LLM and for SAM, text, visual prompts,
                      ground-truth memory, PixelQA's pre-fill text, the forced answer prefix, max_new_tokens
    Prediction(text, masks)   masks: one (len(sam_frames), H, W) bool array per <|seg|> of the answer (only the
                      first is scored), or per prompted object for PixelQA (pass 1), at the source resolution;
                      any other shape raises (an image's (H, W) mask is taken as (1, H, W))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pixelqa.data import masks as rle_masks
from pixelqa.data.schema import Prompt, Sample
from pixelqa.eval import answers, templates
from pixelqa.frame_sampling import uniform_indices, uniform_with_forced
from pixelqa.metrics import protocols as pm
from pixelqa.prompt_format import object_tag

LLM_FRAMES = 16
# visual-token budgets of the official scripts: video frames, images, VideoRefer-Bench-Q frames
VIDEO_BUDGET = (128, 256)
IMAGE_BUDGET = (128, 4096)
VIDEOREFER_Q_BUDGET = (100, 144)


@dataclass
class Request:
    """What the model is asked for one sample; frame indices are positions in `sample.media.frames`."""

    sample: Sample
    llm_frames: list[int]
    sam_frames: list[int]
    text: str
    prompts: list[Prompt] = field(default_factory=list)
    memory: dict[int, dict[int, dict]] = field(default_factory=dict)  # object id -> frame position -> RLE
    prefill_text: str | None = None  # PixelQA pass 1 (teacher-forced `[k] <|seg|>` answer)
    assistant_prefix: str = ""
    max_new_tokens: int = templates.MAX_NEW_TOKENS["seg"]
    token_budget: tuple[int, int] = (128, 256)  # (min, max) visual tokens per frame (per image for images)


@dataclass
class Prediction:
    """The generated text (the continuation after `assistant_prefix`) and the decoded masks."""

    text: str
    masks: list[np.ndarray] = field(default_factory=list)


AnswerFn = Callable[[Request], Any]


def as_prediction(value: Any) -> Prediction:
    """A Prediction from what an answer_fn returned: a Prediction or a (text, masks) pair; masks become numpy bool."""
    if isinstance(value, Prediction):
        text, masks = value.text, value.masks
    elif isinstance(value, tuple) and len(value) == 2:
        text, masks = value
    else:
        raise TypeError(f"answer_fn: returned {type(value).__name__}, expected a Prediction or a (text, masks) pair")
    if isinstance(masks, dict):  # masks by object id (a chat result): in id order
        masks = [masks[k] for k in sorted(masks)]
    out = []
    for m in masks or []:
        arr = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        out.append(arr.astype(bool))
    return Prediction(str(text or ""), out)


# ------------------------------------------------------------------------------------------------ helpers


def object_volume(sample: Sample, object_ids: Sequence[int], frames: Sequence[int]) -> np.ndarray:
    """(len(frames), H, W) bool union of the objects' masks on the given frame positions (unannotated = empty)."""
    h, w = sample.media.size
    out = np.zeros((len(frames), h, w), dtype=bool)
    for oid in object_ids:
        track = sample.objects.get(oid)
        if track is None:
            continue
        for i, f in enumerate(frames):
            if f in track.masks:
                out[i] |= rle_masks.decode(track.masks[f]).astype(bool)
    return out


def check_mask(mask: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """`mask` in exactly `shape` (SAM frames, H, W); an (H, W) mask stands for one frame; anything else raises."""
    shape = tuple(shape)
    if mask.shape == shape:
        return mask
    if len(shape) == 3 and shape[0] == 1 and mask.shape == shape[1:]:
        return mask[None]  # an image's mask without its frame axis
    # never reshape: a transposed (W, H) or (T, W, H) mask has the same size and would be scored silently
    raise ValueError(f"{where}: prediction mask got shape {mask.shape}, expected {shape} (SAM frames, H, W)")


def first_mask(pred: Prediction, shape: tuple[int, ...], where: str = "sample") -> tuple[np.ndarray, bool]:
    """(the first <|seg|>'s mask, whether there was one); no <|seg|> -> all-empty masks, as the official scripts."""
    if not pred.masks:
        return np.zeros(shape, dtype=bool), False
    return check_mask(pred.masks[0], shape, where), True


def annotated_positions(sample: Sample) -> list[int]:
    """Frame positions of VideoRefer's annotated frames: as the converter records them (single-frame samples keep
    one mask but the benchmark's annotated frames all count), else where any object has a mask, else all frames."""
    if sample.meta.get("annotated_frames"):
        return sorted(int(f) for f in sample.meta["annotated_frames"])
    found = sorted({f for t in sample.objects.values() for f in t.masks})
    return found or list(range(sample.media.num_frames))


def target_ids(sample: Sample) -> list[int]:
    """The object ids whose union is the segmentation target (the first <|seg|>'s object)."""
    seg = sample.seg_object_ids()
    return [seg[0]] if seg else sorted(sample.objects)


def _frame_number(name: Any, default: int) -> int:
    """A source frame name ('00045', 45) as a number; `default` when it has no digits."""
    digits = "".join(ch for ch in str(name) if ch.isdigit())
    return int(digits) if digits else default


def _mean(values: Sequence[float]) -> float:
    """Mean, NaN for no values."""
    return float(np.mean(values)) if len(values) else float("nan")


# ---------------------------------------------------------------------------------------------- protocols

# benchmark name -> protocol factory (a Protocol subclass taking no arguments, or a function returning a Protocol),
# in registration order: the teacher-forced video and image benchmarks (`teacher_forced_names`) are read from it
_PROTOCOLS: dict[str, Callable[[], Protocol]] = {}


def register_protocol(name: str, factory: Callable[[], Protocol] | None = None) -> Callable[..., Any]:
    """Register a protocol factory under benchmark `name`: `register_protocol(name, factory)` or, on a Protocol
    subclass taking no arguments, the decorator `@register_protocol(name)`; returns the factory (decorator: itself)."""
    if not isinstance(name, str) or not name or any(c in name for c in "+/ "):
        # '+' appends switches to a protocol name ('reasonseg+exclude_ignore'); '/' names metrics and folders
        raise ValueError(f"name: got {name!r}, expected a non-empty benchmark name without '+', '/' or spaces")

    def add(fn: Callable[[], Protocol]) -> Callable[[], Protocol]:
        if name in _PROTOCOLS:
            raise ValueError(f"name: protocol {name!r} is already registered")
        if not callable(fn):
            raise TypeError(f"register_protocol({name!r}): got {fn!r}, expected a Protocol subclass or a function")
        _PROTOCOLS[name] = fn
        return fn

    return add if factory is None else add(factory)


def unregister_protocol(name: str) -> None:
    """Remove benchmark `name` from the registry (a test's or a notebook's protocol); an unknown name raises."""
    if name not in _PROTOCOLS:
        raise ValueError(f"name: protocol {name!r} is not registered")
    del _PROTOCOLS[name]


def list_protocols() -> list[str]:
    """Every registered benchmark name, in registration order."""
    return list(_PROTOCOLS)


def teacher_forced_names(kind: type[Protocol]) -> tuple[str, ...]:
    """The registered benchmarks whose protocol is a `kind` (VideoSegProtocol, ImageSegProtocol) named after the source
    whose shards it reads, in registration order: the `eval.benchmark` names that family scores teacher-forced
    (`mevis_server` reads mevis's shards: not one)."""
    # read at call time, so a benchmark registered once (even after import) is usable by both routes
    names = []
    for name in list_protocols():
        try:
            protocol = get_official(name)
        except Exception as err:  # noqa: BLE001  (a third party's factory: any error)
            # one broken registration must not take every other benchmark's look-up down with it; said, not hidden
            said = " ".join(str(err).split()) or type(err).__name__
            why = f"benchmark {name!r}: its registered protocol cannot be built ({said}); left out"
            warnings.warn(why, stacklevel=2)
            continue
        if isinstance(protocol, kind) and protocol.name == name:
            names.append(name)
    return tuple(names)


def _registry() -> dict[str, Callable[[], Protocol]]:
    """Benchmark name -> protocol factory (a copy of the registry)."""
    return dict(_PROTOCOLS)


class Protocol:
    """One benchmark's official protocol; subclasses set the class attributes and the three methods."""

    name = ""
    frame_rule = ""
    template = ""
    token_budget: tuple[int, int] = VIDEO_BUDGET
    # metric names of the headline (the keys of the last row that are reported as the benchmark's result)
    headline: tuple[str, ...] = ()
    # named departures from the official run this protocol offers (switch name -> what it changes); all off by
    # default, so a plain protocol scores as the release does
    switches: dict[str, str] = {}
    enabled: frozenset[str] = frozenset()

    def set_switches(self, names: Sequence[str]) -> None:
        """Turn the named switches on (see `switches`); an unknown name raises, naming the known ones."""
        unknown = [n for n in names if n not in self.switches]
        if unknown:
            known = sorted(self.switches) or "none"
            raise ValueError(f"{self.name} protocol switches: got {unknown}, expected some of {known}")
        self.enabled = frozenset(names)

    def request(self, sample: Sample) -> Request:
        """The model input of one sample."""
        raise NotImplementedError

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """One JSON-serialisable record of the sample's scores."""
        raise NotImplementedError

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """The result rows of the paper's table (the last row is the headline)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Frame rule, prompt template, visual-token budget and switches on, for the provenance record."""
        return {
            "frame_rule": self.frame_rule,
            "template": self.template,
            "token_budget": self.token_budget,
            "switches": sorted(self.enabled),
        }


class VideoSegProtocol(Protocol):
    """MeViS valid_u, Ref-DAVIS17, Ref-SAV: per expression, frame means of J and F on every frame; J and F
    averaged over expressions; J&F = (J + F) / 2."""

    frame_rule = "LLM: 16 uniform incl. both ends (round(arange(0, n, (n-1)/15))); SAM: every frame"
    family: str | None = None  # None: query / sentence by the '?' rule
    headline = ("J&F", "J", "F")

    def __init__(self, name: str, family: str | None = None) -> None:
        self.name = name
        self.family = family
        self.template = family or "query ('Please segment the {q} in this video.') / sentence when q ends with '?'"

    def query(self, sample: Sample) -> str:
        """The expression to segment."""
        meta = sample.meta or {}
        for k in ("expression", "query", "question"):
            if meta.get(k):
                return str(meta[k])
        raise ValueError(f"sample {sample.key}: meta has no 'expression', expected the referring text")

    def request(self, sample: Sample) -> Request:
        """16 LLM frames, every frame for SAM, the fixed template."""
        n = sample.media.num_frames
        text = templates.segmentation_prompt(self.query(sample), sample.media.kind, self.family)
        return Request(sample, uniform_indices(n, LLM_FRAMES), list(range(n)), text)

    def target(self, sample: Sample, request: Request) -> np.ndarray:
        """(T, H, W) ground truth on the SAM frames."""
        return object_volume(sample, target_ids(sample), request.sam_frames)

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """J and F frame means of the first <|seg|>'s masks."""
        gt = self.target(sample, request)
        mask, had = first_mask(pred, gt.shape, f"{self.name} sample {sample.key}")
        j, f = pm.expression_jf(mask, gt)
        return {"J": j, "F": f, "no_seg": not had}

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """One row: J, F averaged over expressions, J&F their mean (fractions)."""
        j, f = _mean([r["J"] for r in records]), _mean([r["F"] for r in records])
        no_seg = sum(bool(r.get("no_seg")) for r in records)
        return [{"subset": "all", "expressions": len(records), "no_seg": no_seg, "J": j, "F": f, "J&F": (j + f) / 2}]


class ReVOSProtocol(VideoSegProtocol):
    """ReVOS: J, F, A, R per expression over all frames (percent, rounded to 0.01 as the official script); rows
    referring / reasoning / overall = mean of the subset means; A and R also as the official run read them."""

    headline = ("J&F", "J", "F", "R", "R_as_run")

    def __init__(self) -> None:
        super().__init__("revos")

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """The rounded per-expression scores and the expression's subset."""
        gt = self.target(sample, request)
        mask, had = first_mask(pred, gt.shape, f"{self.name} sample {sample.key}")
        meta = sample.meta or {}
        rles = meta.get("foreground_rles")
        if not rles:
            raise ValueError(f"revos sample {sample.key}: meta has no 'foreground_rles', expected the valid split")
        source = meta.get("source_frames") or list(range(sample.media.num_frames))
        fg = np.stack([rle_masks.decode(rles[source[f]]).astype(bool) for f in request.sam_frames])
        rec = pm.revos_expression(mask, gt, fg)  # the release's foreground masks as they are
        rec.update(subset=str(meta.get("expression_type", "referring")), no_seg=not had)
        return rec

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """referring / reasoning / overall rows, percent turned back into fractions."""
        rows = pm.revos_rows(records)
        no_seg = sum(bool(r.get("no_seg")) for r in records)
        out = []
        for row in rows:
            row = {k: (v / 100.0 if k in pm.REVOS_KEYS else v) for k, v in row.items()}
            row["no_seg"] = no_seg if row["subset"] == "overall" else None
            out.append(row)
        return out


class GroundMoReProtocol(VideoSegProtocol):
    """GroundMoRe: the shard's 20 frames (linspace(0, n-1, 20)) for SAM, 16 of them for the LLM; the answer is
    generated; ground truth only inside the action window; per-question mean; rows per question type."""

    # the converter stores the official 20 frames (pixelqa.frame_sampling.groundmore_indices) and the window
    frame_rule = "SAM: the shard's 20 frames, linspace(0, n-1, 20) as int; LLM: 16 uniform of those"

    def __init__(self) -> None:
        super().__init__("groundmore", family="question")

    def query(self, sample: Sample) -> str:
        """The question."""
        q = (sample.meta or {}).get("question")
        if not q:
            raise ValueError(f"groundmore sample {sample.key}: meta has no 'question'")
        return str(q)

    def target(self, sample: Sample, request: Request) -> np.ndarray:
        """The objects' union, zeroed outside the action window when the shard records it."""
        gt = super().target(sample, request)
        meta = sample.meta or {}
        window = meta.get("action_window")
        if window:
            # each frame's index among the video's frames (the converter records it), else its name's number
            ids = meta.get("frame_indices") or sample.media.frame_ids or list(range(sample.media.num_frames))
            numbers = [_frame_number(ids[f], f) for f in request.sam_frames]
            inside = pm.groundmore_window(
                numbers, window["start"], window["end"], window.get("clip_start", 0.0), window.get("fps", 6.0)
            )
            gt[~np.asarray(inside, dtype=bool)] = False
        return gt

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """J, F of the question plus its type and whether the window was applied."""
        rec = super().score(sample, request, pred)
        meta = sample.meta or {}
        rec.update(question_type=str(meta.get("question_type") or "unknown"), windowed=bool(meta.get("action_window")))
        return rec

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """One row per question type, then `all` (per-question means)."""
        rows = []
        for qt in sorted({r["question_type"] for r in records}):
            rows += [dict(r, subset=qt) for r in super().aggregate([x for x in records if x["question_type"] == qt])]
        rows += super().aggregate(records)
        return rows


class ImageSegProtocol(Protocol):
    """RefCOCO/+/g RES (+ REC from the mask), ReasonSeg: cIoU = sum I / sum U, gIoU = mean I/U (1 when U = 0),
    at the source resolution; REC: tight box after dropping components under 10 px vs the annotation box.
    ReasonSeg's don't-care pixels (`meta["ignore_rle"]`) count as background, as the official run scores them.
    `rec`: the benchmark also scores REC@0.5, so every sample carries the annotation box `meta["box_xyxy"]`
    (ReasonSeg has none). Registered under its source's name, it is also a teacher-forced `eval.benchmark`."""

    frame_rule = "the image (one frame), up to 4096 visual tokens"
    token_budget = IMAGE_BUDGET
    template = "query ('Please segment the {q} in this image.') / sentence when q ends with '?'"
    headline = ("cIoU", "gIoU")
    switches = {
        # infer_seg.py means `keep = gt != -1` (LISA: output[target == ignore] = ignore), but process_masks paints
        # the -1 into a uint8 canvas, which cv2 saturates to 0: as run, keep is all true and 'ignore' is background
        "exclude_ignore": "don't-care pixels (meta.ignore_rle) count in neither I nor U (LISA's rule)",
    }

    def __init__(self, name: str, rec: bool) -> None:
        self.name = name
        self.rec = rec
        if rec:
            self.headline = ("cIoU", "gIoU", "REC@0.5")

    def request(self, sample: Sample) -> Request:
        """The image and the fixed template of its expression."""
        meta = sample.meta or {}
        q = meta.get("expression") or meta.get("query")
        if not q:
            raise ValueError(f"{self.name} sample {sample.key}: meta has no 'expression' or 'query'")
        # ReasonSeg marks its sentence queries; the others follow the '?' rule
        family = ("sentence" if meta["is_sentence"] else "query") if "is_sentence" in meta else None
        text = templates.segmentation_prompt(str(q), "image", family)
        return Request(sample, [0], [0], text, token_budget=IMAGE_BUDGET)

    def iou_counts(self, pred: np.ndarray, gt: np.ndarray, meta: Mapping[str, Any], where: str) -> tuple[int, int]:
        """(I, U) of one (H, W) prediction: don't-care pixels as background, or left out with `exclude_ignore`."""
        rle = meta.get("ignore_rle")
        if "exclude_ignore" not in self.enabled or not rle:
            return pm.image_iou_counts(pred, gt)
        ignore = rle_masks.decode(rle).astype(bool)
        if ignore.shape != gt.shape:
            raise ValueError(f"{where}: meta['ignore_rle'] decodes to {ignore.shape}, expected the image's {gt.shape}")
        keep = ~ignore
        return pm.image_iou_counts(np.asarray(pred, bool) & keep, np.asarray(gt, bool) & keep)

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """Intersection and union (see `iou_counts`) and the REC hit."""
        where = f"{self.name} sample {sample.key}"
        gt = object_volume(sample, target_ids(sample), [0])[0]
        mask, had = first_mask(pred, (1, *gt.shape), where)
        inter, union = self.iou_counts(mask[0], gt, sample.meta or {}, where)
        rec: dict[str, Any] = {"I": inter, "U": union, "no_seg": not had}
        if self.rec:
            box = (sample.meta or {}).get("box_xyxy")
            if box is None:
                raise ValueError(f"{self.name} sample {sample.key}: meta has no 'box_xyxy' for REC")
            rec["rec_hit"] = bool(had and pm.rec_hit(mask[0], box))
        return rec

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """cIoU, gIoU (and REC accuracy) over the split."""
        inter = sum(r["I"] for r in records)
        union = sum(r["U"] for r in records)
        row: dict[str, Any] = {"subset": "all", "expressions": len(records)}
        row["no_seg"] = sum(bool(r.get("no_seg")) for r in records)
        row["cIoU"] = inter / union if union else float("nan")
        row["gIoU"] = _mean([r["I"] / r["U"] if r["U"] else 1.0 for r in records])
        if self.rec:
            row["REC@0.5"] = _mean([float(r["rec_hit"]) for r in records])
        return [row]


class MCQProtocol(Protocol):
    """VideoRefer-Bench-Q (ground-truth masks as memory, forced "The best option is (", first character) and MVBench
    (fps 2 whole video, forced "Best Option: ("): accuracy per question type and overall."""

    headline = ("Acc",)
    switches = {
        # eval_general.check_ans reads response.lower().split(' ')[0] with '(' ')' '.' removed, first character
        "lenient_mcq": "a leading 'The best option is' / 'Best Option:' / 'Answer:' is dropped and the first "
        "whitespace token read (the official rule reads 'Answer: B' as 'a')",
    }

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "mvbench":
            self.frame_rule = "the shard's frames: the whole video at fps 2, at most 16 (sampling.fps_indices)"
            self.template = "question + options + '\\nPlease only give the best option.'; prefix 'Best Option: ('"
            self.prefix = templates.MVBENCH_PREFIX
        else:
            self.token_budget = VIDEOREFER_Q_BUDGET
            self.frame_rule = "16 uniform among the annotated frames, the prompt frame forced in"
            self.template = (
                "memory + question + options + '\\nPlease only give the best option.'; prefix 'The best option is ('"
            )
            self.prefix = templates.VIDEOREFER_PREFIX

    def request(self, sample: Sample) -> Request:
        """The MCQ text with the official instruction, frames by the benchmark's rule, memory = GT masks."""
        users = [t for t in sample.turns if t.role == "user"]
        if not users or not sample.choices:
            raise ValueError(f"{self.name} sample {sample.key}: expected a user turn and `choices`")
        turn = users[-1]
        text = templates.official_mcq_text(turn.text)
        if self.name == "mvbench":
            frames = list(range(sample.media.num_frames))
            return Request(sample, frames, frames, text, assistant_prefix=self.prefix, max_new_tokens=256)
        key_frame = int((sample.meta or {}).get("key_frame", 0))
        frames = uniform_with_forced(annotated_positions(sample), LLM_FRAMES, key_frame)
        memory = {
            oid: {f: sample.objects[oid].masks[f] for f in frames if f in sample.objects[oid].masks}
            for oid in turn.memory_objects
            if oid in sample.objects
        }
        return Request(
            sample,
            frames,
            frames,
            text,
            memory=memory,
            assistant_prefix=self.prefix,
            max_new_tokens=256,
            token_budget=VIDEOREFER_Q_BUDGET,
        )

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """Whether the first character names the answer letter (the official reading unless `lenient_mcq`)."""
        chosen = answers.parse_option(pred.text, len(sample.choices or []), lenient="lenient_mcq" in self.enabled)
        meta = sample.meta or {}
        qtype = meta.get("question_type") or meta.get("task_type") or "unknown"
        return {
            "question_type": str(qtype),
            "chosen": answers.option_letter(chosen),
            "answer": sample.answer,
            "correct": answers.option_letter(chosen) == sample.answer,
        }

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """Accuracy per question type, then overall."""
        rows = []
        for qt in sorted({r["question_type"] for r in records}):
            chosen = [r for r in records if r["question_type"] == qt]
            rows.append({"subset": qt, "questions": len(chosen), "Acc": _mean([float(r["correct"]) for r in chosen])})
        unparsed = sum(r["chosen"] is None for r in records)
        overall = {"subset": "all", "questions": len(records), "unparsed": unparsed}
        overall["Acc"] = _mean([float(r["correct"]) for r in records])
        return rows + [overall]


class PixelQAProtocol(MCQProtocol):
    """PixelQA: 16 frames (prompt frame forced in) for LLM and SAM; pass 1 pre-fills masks from the point / box
    prompts, pass 2 answers after "The best option is ("; per object volume IoU and pixel F1, means over objects."""

    headline = ("J&F", "J", "F", "Acc")

    def __init__(self) -> None:
        super().__init__("pixelqa")
        self.token_budget = VIDEO_BUDGET
        self.template = "pass 1: question with [k] <|ref|> + pre-fill instruction; pass 2: as VideoRefer-Bench-Q"

    def request(self, sample: Sample) -> Request:
        """Both passes' texts, the point / box prompts, 16 frames with the prompt frame."""
        users = [t for t in sample.turns if t.role == "user"]
        if len(users) < 2 or not sample.prompts:
            raise ValueError(f"pixelqa sample {sample.key}: expected a pre-fill turn, an MCQ turn and prompts")
        key_frame = int((sample.meta or {}).get("key_frame", sample.prompts[0].frame))
        frames = uniform_with_forced(annotated_positions(sample), LLM_FRAMES, key_frame)
        prefill = users[0].text
        if templates.PREFILL_INSTRUCTION not in prefill:
            prefill = templates.prefill_prompt(prefill)
        return Request(
            sample,
            frames,
            frames,
            templates.official_mcq_text(users[-1].text),
            prompts=list(sample.prompts),
            prefill_text=prefill,
            assistant_prefix=templates.VIDEOREFER_PREFIX,
            max_new_tokens=256,
        )

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """MCQ correctness and (J, F) per prompted object (masks in prompt order; a missing one is empty)."""
        rec = super().score(sample, request, pred)
        ids = [p.object_id for p in sample.prompts]
        per_object = []
        for i, oid in enumerate(ids):
            gt = object_volume(sample, [oid], request.sam_frames)
            if i < len(pred.masks):
                mask = check_mask(pred.masks[i], gt.shape, f"{self.name} sample {sample.key} object {oid}")
            else:
                mask = np.zeros_like(gt)
            per_object.append(list(pm.pixelqa_object(mask, gt)))
        rec["objects"] = per_object
        rec["missing_masks"] = max(0, len(ids) - len(pred.masks))
        return rec

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """One row: J, F (means over every object of every question), J&F, accuracy."""
        rows = super().aggregate(records)
        objs = [o for r in records for o in r["objects"]]
        j, f = _mean([o[0] for o in objs]), _mean([o[1] for o in objs])
        rows[-1].update({"objects": len(objs), "J": j, "F": f, "J&F": (j + f) / 2})
        return rows


class DescribeProtocol(Protocol):
    """VideoRefer-Bench-D: a detailed description of the masked object (GT masks as memory), judged offline by a
    GPT model on four 0-5 dimensions; the protocol keeps the judge's input records and reports the score pending."""

    frame_rule = "16 uniform among the annotated frames, the prompt frame forced in"
    template = "memory + 'Please give a detailed description of the highlighted object [0] in the video.'"
    token_budget = VIDEOREFER_Q_BUDGET
    headline = ("samples",)

    def __init__(self) -> None:
        self.name = "videorefer_bench_d"

    def request(self, sample: Sample) -> Request:
        """The description request with ground-truth memory, up to 512 new tokens."""
        users = [t for t in sample.turns if t.role == "user"]
        if not users:
            raise ValueError(f"videorefer_bench_d sample {sample.key}: expected a user turn")
        key_frame = int((sample.meta or {}).get("key_frame", 0))
        frames = uniform_with_forced(annotated_positions(sample), LLM_FRAMES, key_frame)
        memory = {
            oid: {f: sample.objects[oid].masks[f] for f in frames if f in sample.objects[oid].masks}
            for oid in users[-1].memory_objects
            if oid in sample.objects
        }
        if len(memory) != 1:
            raise ValueError(f"videorefer_bench_d sample {sample.key}: {len(memory)} memory objects, expected one")
        # the official prompt names the memory object; the shard's own text may tag another id
        text = templates.DESCRIBE_TEXT.format(tag=object_tag(next(iter(memory))))
        return Request(
            sample, frames, frames, text, memory=memory, max_new_tokens=512, token_budget=VIDEOREFER_Q_BUDGET
        )

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """The judge's input record: video, reference caption, prediction."""
        meta = sample.meta or {}
        return {"video": meta.get("video"), "index": meta.get("index"), "caption": sample.answer, "pred": pred.text}

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """A pending row (the four judge dimensions are scored by `pixelqa.eval.judge` when an endpoint is given)."""
        return [{"subset": "all", "samples": len(records), "score": "pending (judge input written)"}]


class SubmissionProtocol(VideoSegProtocol):
    """Server-scored splits (MeViS valid, Ref-YouTube-VOS valid): the masks of every frame are written as palette
    PNGs in the server's layout and zipped (`pixelqa.eval.submission`); nothing is scored locally."""

    headline = ("expressions",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.writer: Any = None  # a SubmissionWriter, set by the runner

    def score(self, sample: Sample, request: Request, pred: Prediction) -> dict[str, Any]:
        """Write the expression's PNGs; the record says where."""
        h, w = sample.media.size
        mask, had = first_mask(pred, (len(request.sam_frames), h, w), f"{self.name} sample {sample.key}")
        meta = sample.meta or {}
        names = sample.media.frame_ids or [f"{i:05d}" for i in range(sample.media.num_frames)]
        frame_names = [str(names[f]) for f in request.sam_frames]
        if self.writer is None:
            raise RuntimeError("SubmissionProtocol.writer: not set, expected a SubmissionWriter from the runner")
        written = self.writer.write(str(meta.get("video")), str(meta.get("exp_id")), frame_names, mask)
        return {"video": meta.get("video"), "exp_id": meta.get("exp_id"), "files": written, "no_seg": not had}

    def aggregate(self, records: Sequence[dict]) -> list[dict]:
        """The count of expressions written (the score comes from the server)."""
        return [{"subset": "all", "expressions": len(records), "no_seg": sum(bool(r["no_seg"]) for r in records)}]


# the built-in benchmarks, through the same path as an extension's (order: as listed in messages)
register_protocol("revos", ReVOSProtocol)
register_protocol("mevis", lambda: VideoSegProtocol("mevis"))
register_protocol("mevis_server", lambda: SubmissionProtocol("mevis"))
register_protocol("ref_youtube_vos", lambda: SubmissionProtocol("ref_youtube_vos"))
register_protocol("ref_davis17", lambda: VideoSegProtocol("ref_davis17"))
register_protocol("ref_sav", lambda: VideoSegProtocol("ref_sav", family="description"))
register_protocol("groundmore", GroundMoReProtocol)
register_protocol("refcoco", lambda: ImageSegProtocol("refcoco", rec=True))
register_protocol("refcoco_plus", lambda: ImageSegProtocol("refcoco_plus", rec=True))
register_protocol("refcocog", lambda: ImageSegProtocol("refcocog", rec=True))
# not in the paper and run by no official script, but eval_refcoco.py's rules hold for any refer-format split (the
# converter gives the same meta, REC box included): registered so that they are benchmarks by name like the others
register_protocol("refcocog_google", lambda: ImageSegProtocol("refcocog_google", rec=True))
register_protocol("refclef", lambda: ImageSegProtocol("refclef", rec=True))
register_protocol("reasonseg", lambda: ImageSegProtocol("reasonseg", rec=False))
register_protocol("videorefer_bench_q", lambda: MCQProtocol("videorefer_bench_q"))
register_protocol("videorefer_bench_d", DescribeProtocol)
register_protocol("pixelqa", PixelQAProtocol)
register_protocol("mvbench", lambda: MCQProtocol("mvbench"))

# the built-in benchmark names (`list_protocols()` also has those registered later)
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOLS)


def get_official(name: str, switches: Sequence[str] = ()) -> Protocol:
    """A fresh protocol object of benchmark `name` (see `list_protocols`) with the named switches on, given as
    `switches` or appended to the name with '+' ('reasonseg+exclude_ignore', the form a suite file's `protocol:`
    takes)."""
    base, *named = name.split("+")
    factories = _registry()
    if base not in factories:
        raise ValueError(f"benchmark: got {name!r}, expected one of {sorted(factories)}")
    protocol = factories[base]()
    protocol.set_switches([*named, *switches])
    return protocol
