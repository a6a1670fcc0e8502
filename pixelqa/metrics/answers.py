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

from pixelqa.data.schema import TASKS

# Tasks whose answer is the thing to get right (captions are free text: exact match would say little).
QA_TASKS: frozenset[str] = frozenset({"region_qa", "memory_qa", "video_qa", "image_qa", "mcq", "pixelqa"})
TASK_ORDER: tuple[str, ...] = tuple(sorted(TASKS))


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

    def __init__(self, tasks: Sequence[str] = TASK_ORDER, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tasks = tuple(tasks)
        self.add_state("correct", default=torch.zeros(len(self.tasks), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(self.tasks), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor, tasks: Sequence[str]) -> None:
        """Add per-sample outcomes (B,) bool for the samples' task names."""
        if len(tasks) != len(correct):
            raise ValueError(f"tasks: got {len(tasks)} names for {len(correct)} outcomes, expected one per sample")
        for ok, task in zip(correct.tolist(), tasks):
            if task not in self.tasks:
                raise ValueError(f"task: got {task!r}, expected one of {self.tasks}")
            i = self.tasks.index(task)
            self.correct[i] += int(ok)
            self.total[i] += 1

    def compute(self) -> dict[str, Tensor]:
        """{task: accuracy} for tasks seen, plus `qa` = accuracy over all QA_TASKS samples pooled."""
        out: dict[str, Tensor] = {}
        for i, task in enumerate(self.tasks):
            if self.total[i] > 0:
                out[task] = self.correct[i].float() / self.total[i]
        qa = [i for i, t in enumerate(self.tasks) if t in QA_TASKS]
        total = self.total[qa].sum()
        if total > 0:
            out["qa"] = self.correct[qa].sum().float() / total
        return out
