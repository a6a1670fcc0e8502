"""The `synthetic` benchmark scored by free generation: what a user of the trained model would see.

Per validation sample the model gets the media (every frame; SAM segments all of them, the LLM sees
`num_frames` of them, uniform with both ends and the prompt frames forced in, as in `pixelqa.predict`), the
sample's visual prompts and its question, and answers by greedy generation (`max_new_tokens`, short answers):

- memory_qa (a first turn about objects given as memory): their ground-truth masks enter the memory bank (as
  VideoRefer-Bench-Q's protocol gives ground-truth memory) and the question is answered by generation;
- samples with a memory turn after prompts (pixelqa): the released two-pass protocol through
  `pixelqa.predict.Predictor`: the question (its object tags `[k]` turned into `[k] <|ref|>`) is pre-filled with
  the teacher-forced answer `[k] <|seg|> ...`, the pre-filled objects' masks enter the memory bank and the
  question is then answered by generation with that memory injected (the same pre-fill the sample's own first
  turn holds: the question with `[k] <|ref|>` in a released template);
- samples with prompts but no memory turn (region_qa, region_caption): the first user turn with its `<|ref|>`
  prompts in one pass, as they were trained (the model's chat would pre-fill every prompted object first);
- the rest: the first user turn through the Predictor; the masks of the generated `<|seg|>` tokens.

Answers: exact match to the reference after `normalise_answer` (strip, case, one final period); multiple-choice
answers by the option letter the official parser reads (`pixelqa.eval.answers.parse_option`). Masks: J&F of each
target object (the reference answer's `<|seg|>` objects in order, and the pre-filled objects) against the ground
truth on its annotated frames; a target without a predicted mask scores an empty mask (J = 0). Samples with a
missing or an extra mask are counted.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pixelqa.data import masks as rle_masks
from pixelqa.data.budgets import PixelBudget
from pixelqa.data.loader import object_masks
from pixelqa.data.schema import Sample
from pixelqa.eval.answers import parse_option
from pixelqa.eval.runner import POOLED, EvalResult, PassCount, register_pass
from pixelqa.prompt_format import REF, count_seg, object_tag, parse_prefill

GEN = "gen/"  # prefix of every metric of this protocol, next to the teacher-forced ones


@dataclass
class SyntheticQuery:
    """What one sample asks under free generation and what is scored."""

    text: str  # the user text given to the model (one <|ref|> per prompt, in prompt order)
    prompts: list  # pixelqa.model.chat Point / Box / Mask, object_id = the sample's object id, frame = media frame
    prefill: bool  # two-pass: the prompts' objects are pre-filled, then the question is answered
    reference: str  # the reference answer
    targets: list[int]  # object ids whose masks are scored: pre-filled ones, then the reference's <|seg|> objects
    choices: list[str] | None = None  # options of a multiple-choice question (the reference is the letter)
    memory: list[int] = field(default_factory=list)  # objects given as ground-truth memory (no prompts to pre-fill)


@dataclass
class SampleOutcome:
    """One sample's generated answer and its scores."""

    key: str
    task: str
    answer: str
    correct: bool
    missing: int  # targets without a predicted mask
    extra: int  # predicted masks without a target
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (pred, target) (T, H, W) bool


def normalise_answer(text: str) -> str:
    """An answer for exact match: surrounding space stripped, lower case, one final period dropped."""
    out = " ".join(str(text).split()).lower()
    return out[:-1].rstrip() if out.endswith(".") else out


def answer_correct(generated: str, reference: str, choices: list[str] | None = None) -> bool:
    """True when the generated answer is the reference: the same option letter for a multiple-choice question
    (read as the official MCQ parser does), else the same text after `normalise_answer`."""
    if choices:
        want = parse_option(reference, len(choices))
        if want is None:
            raise ValueError(f"reference: got {reference!r}, expected an option letter A-{chr(64 + len(choices))}")
        return parse_option(generated, len(choices)) == want
    return normalise_answer(generated) == normalise_answer(reference)


def match_masks(
    targets: list[torch.Tensor], preds: list[torch.Tensor | None]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, int]:
    """(pred, target) pairs in order, missing count, extra count: target i is scored against prediction i; a
    target without one (or with None) is scored against an empty mask, predictions beyond the targets are extra."""
    pairs, missing = [], 0
    for i, target in enumerate(targets):
        pred = preds[i] if i < len(preds) else None
        if pred is None:
            missing += 1
            pred = torch.zeros_like(target, dtype=torch.bool)
        elif tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred masks: got shape {tuple(pred.shape)}, expected the target's {tuple(target.shape)}")
        pairs.append((pred.bool(), target.bool()))
    extra = sum(1 for p in preds[len(targets) :] if p is not None)
    return pairs, missing, extra


def _tag_to_ref(text: str, object_ids: list[int], key: str) -> str:
    """The text with the first `[k]` of every prompted object turned into `[k] <|ref|>` (prompt order checked)."""
    spots = []
    for k in object_ids:
        m = re.search(re.escape(object_tag(k)), text)
        if m is None:
            raise ValueError(f"{key}: the question {text!r} names no {object_tag(k)}, expected one tag per prompt")
        spots.append(m.end())
    out, last = "", 0
    for end in sorted(spots):
        out += text[last:end] + f" {REF}"
        last = end
    return out + text[last:]


def _chat_prompt(p: Any, size: tuple[int, int], key: str) -> Any:
    """A shard prompt (source pixels) as the model's chat prompt (normalised), keeping its object id."""
    from pixelqa.model.chat import Box, Mask, Point

    h, w = size
    c = p.coords or []
    if p.type == "point":
        return Point(c[0] / w, c[1] / h, frame=p.frame, object_id=p.object_id)
    if p.type == "box":
        return Box(c[0] / w, c[1] / h, c[2] / w, c[3] / h, frame=p.frame, object_id=p.object_id)
    if p.type == "mask":
        return Mask(torch.from_numpy(rle_masks.decode(p.rle).astype(bool)), frame=p.frame, object_id=p.object_id)
    raise ValueError(f"{key}: prompt type {p.type!r}, expected 'point', 'box' or 'mask'")


def query_of(sample: Sample) -> SyntheticQuery:
    """The free-generation query of a synthetic sample (see the module docstring for the mapping)."""
    users = [i for i, t in enumerate(sample.turns) if t.role == "user"]
    if not users or users[0] + 1 >= len(sample.turns):
        raise ValueError(f"{sample.key}: turns hold no user turn followed by an answer, expected a question")
    prompts = [_chat_prompt(p, sample.media.size, sample.key) for p in sample.prompts]
    memory_turn = next((i for i in users if sample.turns[i].memory_objects), None)
    if memory_turn is not None and prompts:
        ask, answer = sample.turns[memory_turn], sample.turns[memory_turn + 1]
        ids = [p.object_id for p in prompts]
        prompts = [prompts[j] for j in sorted(range(len(ids)), key=lambda j: ask.text.find(object_tag(ids[j])))]
        text = _tag_to_ref(ask.text, [p.object_id for p in prompts], sample.key)
        prefilled = [k for t in sample.turns[:memory_turn] if t.role == "assistant" for k in t.seg_objects]
        return SyntheticQuery(
            text, prompts, True, answer.text, prefilled + list(answer.seg_objects), sample.choices or None
        )
    ask, answer = sample.turns[users[0]], sample.turns[users[0] + 1]
    return SyntheticQuery(
        ask.text,
        prompts,
        False,
        answer.text,
        list(answer.seg_objects),
        sample.choices or None,
        list(ask.memory_objects),
    )


def _ground_truth(sample: Sample, oid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, W) bool masks of object `oid` on every frame (empty where unannotated) and the (T,) annotated frames."""
    masks, valid = object_masks(sample, [oid])
    return torch.from_numpy(masks[0]), torch.from_numpy(valid[0])


def _predictions(
    query: SyntheticQuery, prefilled: dict[int, torch.Tensor], generated: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """The prediction for each target in order: the pre-filled objects' masks, then the generated ones."""
    n_pre = len(query.targets) - count_seg(query.reference)
    return [prefilled.get(k) for k in query.targets[:n_pre]] + list(generated)


def _at_size(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, h, w) masks -> (T, H, W) bool at the media size (nearest)."""
    m = mask.detach().float().cpu()
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(m[:, None], size=size, mode="nearest")[:, 0]
    return m > 0.5


class SyntheticGenerator:
    """Answers synthetic queries with a model: the Predictor (one- or two-pass) or a one-pass prompted turn."""

    def __init__(self, model: Any, llm_frames: int, max_new_tokens: int, budget: PixelBudget | None = None) -> None:
        from pixelqa.predict import Predictor

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: got {max_new_tokens}, expected >= 1")
        self.model = model
        self.llm_frames = int(llm_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.budget = budget  # the training pixel budget, so frames enter at the sizes the model was trained on
        self.predictor = Predictor(model, llm_frames=self.llm_frames, max_new_tokens=self.max_new_tokens)

    def run(self, sample: Sample, query: SyntheticQuery) -> tuple[str, dict[int, torch.Tensor], list[torch.Tensor]]:
        """(answer, pre-filled masks by object id, generated <|seg|> masks in text order), masks (T, H, W) bool."""
        frames = torch.from_numpy(np.ascontiguousarray(sample.decode_frames())).permute(0, 3, 1, 2).contiguous()
        kind = sample.media.kind
        budget = self.budget.call_kwargs(kind) if self.budget is not None else None
        if query.prompts and not query.prefill:
            return self._one_pass(frames, kind, query, budget), {}, []
        from pixelqa.predict import media_from_tensor

        memory = {k: _ground_truth(sample, k)[0] for k in query.memory} or None
        out = self.predictor.run(
            media_from_tensor(frames, kind), query.text, list(query.prompts), memory=memory, processor_kwargs=budget
        )
        size = sample.media.size
        prompted = [p.object_id for p in query.prompts]
        prefilled = {k: _at_size(out.masks[k], size) for k in prompted if k in out.masks}
        generated = [k for k in out.masks if k not in prompted]
        # an answer that writes `[k] <|seg|>` for a prompted k replaces that object's pre-filled mask (the model's
        # chat keeps one mask per id); the <|seg|> still counts as extra in `score_sample`
        ids = parse_prefill(out.answer)
        if sorted(ids) == sorted(generated):  # the answer names its objects: keep its order
            generated = ids
        return out.answer, prefilled, [_at_size(out.masks[k], size) for k in generated]

    def _one_pass(self, frames: torch.Tensor, kind: str, query: SyntheticQuery, budget: dict | None) -> str:
        """The answer of one prompted turn as trained (the `<|ref|>` prompts in the text, no pre-fill)."""
        from pixelqa.model.chat import ChatState, build_batch, to_visual_prompt
        from pixelqa.model.generation import greedy_generate
        from pixelqa.model.memory import ObjectMemoryBank
        from pixelqa.predict.frames import llm_positions

        pos = llm_positions(int(frames.shape[0]), [p.frame for p in query.prompts], self.llm_frames)
        state = ChatState(media=frames[pos], kind=kind, bank=ObjectMemoryBank(len(pos)), processor_kwargs=budget)
        vps = [to_visual_prompt(dataclasses.replace(p, frame=pos.index(p.frame)), p.object_id) for p in query.prompts]
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                batch = build_batch(self.model, state, query.text, None, vps, [])
                gen = greedy_generate(self.model, batch, self.max_new_tokens, visual_cache=state.visual_cache)
        finally:
            self.model.train(was)
        return gen.text


def score_sample(
    sample: Sample,
    query: SyntheticQuery,
    answer: str,
    prefilled: dict[int, torch.Tensor],
    generated: list[torch.Tensor],
) -> SampleOutcome:
    """Score one generated answer and its masks against the sample's reference and ground truth."""
    preds = _predictions(query, prefilled, generated)
    targets, valid = [], []
    for k in query.targets:
        m, v = _ground_truth(sample, k)
        targets.append(m)
        valid.append(v)
    pairs, missing, extra = match_masks(targets, preds)
    extra = max(extra, count_seg(answer) - count_seg(query.reference))  # a one-pass turn decodes no masks
    pairs = [(p[v], t[v]) for (p, t), v in zip(pairs, valid) if v.any()]  # annotated frames only
    correct = answer_correct(answer, query.reference, query.choices)
    return SampleOutcome(sample.key, sample.task, answer, correct, missing, extra, pairs)


def score_outcomes(outcomes: list[SampleOutcome]) -> EvalResult:
    """Pool sample outcomes: `gen/J`, `gen/F`, `gen/J&F`, `gen/qa_acc`, missing / extra counts, a per-task table."""
    from pixelqa.metrics import JAndF
    from pixelqa.metrics.answers import TaskAccuracy

    # one process scores (fit's rank 0): no cross-process sync, which would wait for ranks that are not scoring
    overall, per_task = JAndF(sync_on_compute=False), {}
    acc = TaskAccuracy(sync_on_compute=False)
    for o in outcomes:
        for pred, target in o.pairs:
            overall.update(pred, target)
            per_task.setdefault(o.task, JAndF(sync_on_compute=False)).update(pred, target)
    if outcomes:
        acc.update(torch.tensor([o.correct for o in outcomes]), [o.task for o in outcomes])
    accs = {k: float(v) for k, v in acc.compute().items()}
    metrics: dict[str, float] = {f"{GEN}samples": float(len(outcomes))}
    if overall.num_objects > 0:
        metrics.update({f"{GEN}{k}": float(v) for k, v in overall.compute().items() if k in ("J", "F", "J&F")})
    if "qa" in accs:
        metrics[f"{GEN}qa_acc"] = accs["qa"]
    metrics[f"{GEN}samples_missing_masks"] = float(sum(o.missing > 0 for o in outcomes))
    metrics[f"{GEN}samples_extra_masks"] = float(sum(o.extra > 0 for o in outcomes))
    rows = []
    for task in sorted({o.task for o in outcomes}):
        mine = [o for o in outcomes if o.task == task]
        jf = {k: float(v) for k, v in per_task[task].compute().items()} if task in per_task else {}
        rows.append(_row(task, mine, jf, accs.get(task, float("nan"))))
    rows.append(
        _row(POOLED, outcomes, {k[len(GEN) :]: v for k, v in metrics.items()}, metrics.get(f"{GEN}qa_acc", np.nan))
    )
    return EvalResult(metrics, rows)


def _row(task: str, outcomes: list[SampleOutcome], jf: dict[str, float], acc: float) -> dict[str, Any]:
    """One result-table row of the generation scoring."""
    nan = float("nan")
    return {
        "scoring": "generate",
        "task": task,
        "samples": len(outcomes),
        "J": jf.get("J", nan),
        "F": jf.get("F", nan),
        "J&F": jf.get("J&F", nan),
        "answer_acc": float(acc),
        "missing_masks": sum(o.missing for o in outcomes),
        "extra_masks": sum(o.extra for o in outcomes),
    }


def generate_and_score(
    model: Any,
    samples: list[Sample],
    llm_frames: int,
    max_new_tokens: int = 24,
    per_task: int | None = None,
    num_overlays: int = 0,
    budget: PixelBudget | None = None,
) -> EvalResult:
    """Generate an answer for each sample (at most `per_task` samples of each task, in order) and score them; the
    overlays show the first samples with targets (ground truth | generated). The metrics are scores and counts only:
    the pass's wall time is a `time/` metric of whoever times it (fit: `time/val_gen_s`; evaluate: `time/eval_s`)."""
    generator = SyntheticGenerator(model, llm_frames, max_new_tokens, budget)
    outcomes, seen, overlays = [], {}, []
    for sample in samples:
        if per_task is not None and seen.get(sample.task, 0) >= per_task:
            continue
        seen[sample.task] = seen.get(sample.task, 0) + 1
        query = query_of(sample)
        answer, prefilled, generated = generator.run(sample, query)
        outcome = score_sample(sample, query, answer, prefilled, generated)
        outcomes.append(outcome)
        if len(overlays) < num_overlays and query.targets:
            overlays.append(_overlay(sample, query, prefilled, generated))
    result = score_outcomes(outcomes)
    result.overlays = overlays
    return result


def _overlay(sample: Sample, query: SyntheticQuery, prefilled: dict, generated: list) -> dict[str, Any]:
    """An overlay item: frames (T, H, W, 3) uint8, pred / target (K, T, H, W) bool (an empty mask where missing)."""
    targets = [_ground_truth(sample, k)[0] for k in query.targets]
    pairs, _, _ = match_masks(targets, _predictions(query, prefilled, generated))
    return {
        "key": sample.key,
        "frames": sample.decode_frames(),
        "pred": torch.stack([p for p, _ in pairs]).numpy(),
        "target": torch.stack([t for _, t in pairs]).numpy(),
    }


def read_samples(
    recipe: Any, limit: int | None = None, source: str = "synthetic", split: str | None = None
) -> tuple[list[Sample], PassCount]:
    """The first `limit` samples (None: all) of `split` (None: `recipe.eval.split`), every frame kept, and the pass's
    count (samples read / expected, damaged records). A sample the teacher-forced pass cannot score (`usable`
    rejects it, with a warning) is left out here too: both scorings cover the same samples."""
    from pixelqa.data.shard_reader import DamageLog
    from pixelqa.train.datamodule import SourceIndex, build_synthetic, usable

    data = recipe.data
    split = recipe.eval.split if split is None else split
    if source == "synthetic" and data.build_if_missing:
        build_synthetic(data.shards, split, data.synthetic_val if split != "train" else data.synthetic_train)
    damage = DamageLog(strict=bool(getattr(data, "strict", False)))
    index = SourceIndex(data.shards, source, split, damage=damage)
    picked = range(len(index) if limit is None else min(limit, len(index)))
    read = [s for s in (index.read(i) for i in picked) if s is not None]
    # usable() cuts frames only to check; generation keeps every frame of the sample itself
    samples = [s for s in read if usable(s, int(data.num_frames)) is not None]
    expected = index.expected if limit is None else min(index.expected, limit)
    available = index.expected if index.expected > expected else None  # what a limit left out, as runner records
    return samples, PassCount(f"{source} (generate)", split, expected, len(samples), damage.count, available)


def evaluate_synthetic_generate(
    model: Any,
    recipe: Any,
    num_overlays: int = 0,
    limit: int | None = None,
    count: bool = True,
    split: str | None = None,
) -> EvalResult:
    """Score `model` on the first `limit` samples (None: `recipe.eval.max_samples`) of the synthetic split `split`
    (None: `recipe.eval.split`) by free generation (`recipe.eval.generate_*` set the cap per task and the new-token
    cap; the LLM sees `recipe.data.num_frames` frames, as in training); `gen/samples_expected` and
    `gen/samples_skipped` (damaged or unusable records) say what the scores cover."""
    from pixelqa.config import RecipeError

    try:
        budget = PixelBudget.from_data(recipe.data)
    except ValueError as err:
        raise RecipeError(f"data: {err}") from None
    ev = recipe.eval
    if int(ev.generate_max_new_tokens) < 1:
        raise RecipeError(f"eval.generate_max_new_tokens={ev.generate_max_new_tokens!r} is not valid; expected >= 1")
    if ev.generate_per_task is not None and int(ev.generate_per_task) < 1:
        raise RecipeError(f"eval.generate_per_task={ev.generate_per_task!r} is not valid; expected null or >= 1")
    samples, passed = read_samples(recipe, recipe.eval.max_samples if limit is None else limit, split=split)
    result = generate_and_score(
        model,
        samples,
        llm_frames=int(recipe.data.num_frames),
        max_new_tokens=int(ev.generate_max_new_tokens),
        per_task=ev.generate_per_task,
        num_overlays=num_overlays,
        budget=budget,
    )
    # skipped: expected but unreadable or unusable; eval.generate_per_task's cap is a choice, not a shortfall
    result.metrics[f"{GEN}samples_expected"] = float(passed.expected)
    result.metrics[f"{GEN}samples_skipped"] = float(passed.expected - passed.scored)
    passed.scored = int(result.metrics[f"{GEN}samples"])  # fewer than read under eval.generate_per_task
    if count:  # off when the teacher-forced pass counts the same samples
        register_pass(passed)
    return result


def _val_sources(recipe: Any) -> list[str]:
    """The names of the recipe's validation sources."""
    return sorted({src.name for src in recipe.data.val_sources})


def check_generation_scoring(recipe: Any) -> None:
    """Before any work: `eval.scoring=generate` on validation data that is not synthetic is an error; `both` there
    keeps the teacher-forced scores only and says so (the demo scale sets `both` for any data preset)."""
    from pixelqa.config import RecipeError

    names = _val_sources(recipe)
    if recipe.eval.scoring == "teacher_forced" or names == ["synthetic"]:
        return
    if recipe.eval.scoring == "generate":
        raise RecipeError(
            f"eval.scoring=generate: free generation after fit scores the synthetic split, but data.val_sources "
            f"are {names}; use eval.scoring=teacher_forced, or score the paper's benchmarks by generation with "
            f"python -m pixelqa.evaluate suite=paper"
        )
    print(f"eval.scoring=both: data.val_sources are {names}, not synthetic; scoring teacher-forced only")


def fit_validation_split(recipe: Any) -> str:
    """The split fit's generation pass reads: that of its one synthetic validation source (the samples the
    teacher-forced pass scores), else `eval.split`."""
    splits = {src.split for src in recipe.data.val_sources if src.name == "synthetic"}
    return splits.pop() if len(splits) == 1 else recipe.eval.split


def generation_time_metric(prefix: str = "") -> str:
    """The name of the wall time of fit's generation pass: `time/val_gen_s` (`time/untrained_val_gen_s` for the
    `untrained/` pass), beside fit's other times and out of the score namespaces."""
    return f"time/{prefix.strip('/')}{'_' if prefix else ''}val_gen_s"


def after_fit_generation(model: Any, recipe: Any, prefix: str = "") -> dict[str, float]:
    """`{prefix}val/gen/...` metrics of free generation when `recipe.eval.scoring` asks for them on synthetic
    validation data, else {}; over the samples fit's teacher-forced validation scores (`validation_limit`). The
    pass's wall time is `generation_time_metric(prefix)`."""
    from pixelqa.train.datamodule import validation_limit

    if recipe.eval.scoring == "teacher_forced" or _val_sources(recipe) != ["synthetic"]:
        return {}
    limit = validation_limit(recipe.data, recipe.eval.max_samples)  # None only when both are: every sample
    start = time.perf_counter()
    result = evaluate_synthetic_generate(model, recipe, limit=limit, split=fit_validation_split(recipe))
    metrics = {f"{prefix}val/{k}": float(v) for k, v in result.metrics.items()}
    metrics[generation_time_metric(prefix)] = time.perf_counter() - start
    return metrics
