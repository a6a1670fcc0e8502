"""The `synthetic` benchmark: J&F of every <|seg|> object and exact-match answer accuracy, per task and overall.

`recipe.eval.scoring` picks the scoring: `teacher_forced` (this module: the model reads the reference answer; its
arg-max answer and the masks of the reference's <|seg|> tokens: `J&F`, `qa_acc`), `generate` (free generation,
`pixelqa.eval.synthetic_generate`: `gen/J&F`, `gen/qa_acc`, ...) or `both` (both metric sets, one table).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pixelqa.eval.runner import POOLED, EvalResult, eval_batches
from pixelqa.metrics.answers import TaskAccuracy, answer_exact_match


def evaluate_synthetic(model: Any, recipe: Any, source: str = "synthetic", num_overlays: int = 4) -> EvalResult:
    """Score `model` on the synthetic split `recipe.eval.split` (first `recipe.eval.max_samples` samples) the way
    `recipe.eval.scoring` says (teacher_forced | generate | both)."""
    from pixelqa.eval.synthetic_generate import evaluate_synthetic_generate

    scoring = getattr(recipe.eval, "scoring", "teacher_forced")
    if scoring == "generate":
        return evaluate_synthetic_generate(model, recipe, num_overlays=num_overlays)
    forced = evaluate_teacher_forced(model, recipe, source, num_overlays)
    if scoring == "teacher_forced":
        return forced
    gen = evaluate_synthetic_generate(model, recipe, count=False)  # the teacher-forced pass counted these samples
    rows = [{"scoring": "teacher_forced", **r, "missing_masks": "", "extra_masks": ""} for r in forced.rows]
    return EvalResult({**forced.metrics, **gen.metrics}, rows + gen.rows, forced.overlays)


def evaluate_teacher_forced(model: Any, recipe: Any, source: str = "synthetic", num_overlays: int = 4) -> EvalResult:
    """Teacher-forced scoring of the synthetic split (see the module docstring)."""
    from pixelqa.metrics import JAndF
    from pixelqa.train.module import overlay_items, update_mask_metric

    overall = JAndF()
    per_task: dict[str, Any] = {}
    acc = TaskAccuracy()
    counts: dict[str, int] = {}
    overlays: list[dict] = []
    for batch, out, _ in eval_batches(model, recipe, source, recipe.eval.split, recipe.eval.max_samples):
        update_mask_metric(overall, out.pred_masks, batch)
        for i, task in enumerate(batch.tasks):
            counts[task] = counts.get(task, 0) + 1
            if batch.seg_masks[i].numel():
                sub = _subset(batch, i)
                update_mask_metric(per_task.setdefault(task, JAndF()), [out.pred_masks[i]], sub)
        correct, scored = answer_exact_match(out.logits, batch.labels)
        idx = [i for i in range(batch.size) if scored[i]]
        if idx:
            acc.update(correct[idx], [batch.tasks[i] for i in idx])
        if len(overlays) < num_overlays:
            overlays.extend(overlay_items(batch, out.pred_masks, num_overlays - len(overlays)))
    metrics: dict[str, float] = {}
    if overall.update_count:
        metrics.update({k: float(v) for k, v in overall.compute().items() if k in ("J", "F", "J&F")})
    accs = {k: float(v) for k, v in acc.compute().items()}
    if "qa" in accs:
        metrics["qa_acc"] = accs["qa"]
    rows = []
    for task in sorted(counts):
        jf = per_task[task].compute() if task in per_task else {}
        rows.append(
            {
                "task": task,
                "samples": counts[task],
                "J": float(jf["J"]) if jf else float("nan"),
                "F": float(jf["F"]) if jf else float("nan"),
                "J&F": float(jf["J&F"]) if jf else float("nan"),
                "answer_acc": accs.get(task, float("nan")),
            }
        )
    rows.append(
        {
            "task": POOLED,
            "samples": sum(counts.values()),
            "J": metrics.get("J", float("nan")),
            "F": metrics.get("F", float("nan")),
            "J&F": metrics.get("J&F", float("nan")),
            "answer_acc": metrics.get("qa_acc", float("nan")),
        }
    )
    return EvalResult(metrics, rows, overlays)


def _subset(batch: Any, i: int) -> Any:
    """A view of sample i's targets shaped like a batch (for per-task metric updates)."""
    return SimpleNamespace(seg_masks=[batch.seg_masks[i]], seg_valid=[batch.seg_valid[i]] if batch.seg_valid else [])
