"""Answer scores of one teacher-forced forward pass: exact match per sample, accuracy per task.

Exact match from teacher-forced logits equals greedy decoding: if the arg-max at every labelled position is the
label, greedy decoding (fed its own, identical, tokens) reproduces the whole answer; one wrong arg-max makes the
greedy answer differ. So no generation loop is needed to score short answers (QA, MCQ letters, pre-fill turns).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

# Tasks whose answer is the thing to get right (captions are free text: exact match would say little).
QA_TASKS: frozenset[str] = frozenset({"region_qa", "memory_qa", "video_qa", "image_qa", "mcq", "pixelqa"})


def task_order() -> tuple[str, ...]:
    """Every task of the sample schema, sorted (TaskAccuracy's default tasks).

    Read when needed: importing `pixelqa.data` imports OpenCV, which changes the process's LD_LIBRARY_PATH, and
    `import pixelqa.metrics` should not.
    """
    from pixelqa.data.schema import TASKS

    return tuple(sorted(TASKS))


def __getattr__(name: str) -> tuple[str, ...]:
    """`TASK_ORDER` (= task_order()), computed on first use."""
    if name == "TASK_ORDER":
        return task_order()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _outcomes(correct) -> Tensor:
    """(B,) per-sample outcomes as a long 0/1 tensor: bool, or integer / float values that are all 0 or 1."""
    try:
        c = torch.as_tensor(correct)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"correct: got {type(correct).__name__}, expected (B,) bool outcomes (a tensor or a list)"
        ) from None
    if c.ndim != 1:
        raise ValueError(f"correct: got shape {tuple(c.shape)}, expected (B,) bool outcomes, one per sample")
    if c.dtype != torch.bool:
        bad = c if c.is_complex() else c[(c != 0) & (c != 1)]
        if bad.numel():
            raise ValueError(f"correct: got {c.dtype} value {bad[0].item()!r}, expected bool outcomes (or 0 / 1)")
    return c.long().cpu()


def answer_exact_match(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """(correct (B,) bool, scored (B,) bool): every labelled token is the arg-max of the previous position's logits.

    logits (B, L, V) predict the next token; labels (B, L) are aligned with the input ids (-100 = not scored).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits/labels: got {tuple(logits.shape)} / {tuple(labels.shape)}, expected (B, L, V) / (B, L)"
        )
    pred = logits[:, :-1].argmax(-1)  # (B, L-1): token predicted for position i+1
    target = labels[:, 1:]
    scored = target != ignore_index
    wrong = (pred != target) & scored
    return ~wrong.any(1), scored.any(1)


class TaskAccuracy(Metric):
    """Exact-match accuracy per task (states are per-task sums, so they reduce correctly across processes)."""

    full_state_update = False

    def __init__(self, tasks: Sequence[str] | str | None = None, **kwargs) -> None:
        """tasks: the task names to score (one name, or several, distinct); None: every task of the sample schema."""
        super().__init__(**kwargs)
        tasks = task_order() if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
        if not tasks or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks: got {tasks!r}, expected task names (str)")
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise ValueError(f"tasks: got {repeated[0]!r} more than once in {tasks}, expected distinct task names")
        self.tasks = tuple(tasks)
        self.add_state("correct", default=torch.zeros(len(self.tasks), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(self.tasks), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor | Sequence[bool], tasks: Sequence[str] | str) -> None:
        """Add per-sample outcomes (B,) bool (or 0 / 1; a tensor or a list) for the samples' task names."""
        ok = _outcomes(correct)
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if len(tasks) != len(ok):
            raise ValueError(f"tasks: got {len(tasks)} names for {len(ok)} outcomes, expected one per sample")
        for hit, task in zip(ok.tolist(), tasks):
            if task not in self.tasks:
                raise ValueError(f"task: got {task!r}, expected one of {self.tasks}")
            i = self.tasks.index(task)
            self.correct[i] += hit
            self.total[i] += 1

    def compute(self) -> dict[str, Tensor]:
        """{task: accuracy} for tasks seen, plus `qa` = accuracy over all QA_TASKS samples pooled.

        Tasks without samples are left out (so before any update the result is {}): a key is a task that was
        scored, and a missing key, not a NaN, says it was not.
        """
        out: dict[str, Tensor] = {}
        for i, task in enumerate(self.tasks):
            if self.total[i] > 0:
                out[task] = self.correct[i].float() / self.total[i]
        qa = [i for i, t in enumerate(self.tasks) if t in QA_TASKS]
        total = self.total[qa].sum()
        if total > 0:
            out["qa"] = self.correct[qa].sum().float() / total
        return out
