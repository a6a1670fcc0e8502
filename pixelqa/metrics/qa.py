"""Multiple-choice accuracy, overall and per question type (VideoRefer-Bench-Q: BQ, SQ, RQ, CQ, FP)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MCQAccuracy", "choice_index"]

VIDEOREFER_Q_TYPES = ("BQ", "SQ", "RQ", "CQ", "FP")


def choice_index(choice: int | str | None) -> int:
    """A choice as a 0-based index: ints (numpy's too) pass through, letters map A -> 0, B -> 1, ...; None/""
    (unparsed) -> -1."""
    if choice is None:
        return -1
    if isinstance(choice, bool):
        raise TypeError(f"choice must be an int index or a letter, got bool {choice}")
    if isinstance(choice, numbers.Integral):
        return int(choice)
    if isinstance(choice, str):
        text = choice.strip().strip("().").strip()
        if text == "":
            return -1
        if len(text) == 1 and text.isalpha():
            return ord(text.upper()) - ord("A")
        if text.lstrip("-").isdigit():
            return int(text)
        raise ValueError(f"choice must be a single letter (A, B, ...) or an index, got {choice!r}")
    raise TypeError(f"choice must be an int index or a letter, got {type(choice).__name__}")


def _as_indices(choices: Tensor | Sequence[int | str | None], name: str) -> Tensor:
    """A 1-D int64 tensor of choice indices from a tensor or a list of ints / letters."""
    if isinstance(choices, Tensor):
        if choices.ndim != 1 or choices.is_floating_point():
            raise ValueError(
                f"{name} must be a 1-D integer tensor of choice indices, got {choices.dtype} "
                f"of shape {tuple(choices.shape)}"
            )
        return choices.long().cpu()
    if isinstance(choices, str):
        choices = [choices]
    return torch.tensor([choice_index(c) for c in choices], dtype=torch.long)


class MCQAccuracy(Metric):
    """Multiple-choice accuracy overall (``acc``: correct / all questions) and per question type.

    ``update(preds, target, question_types)``: predicted and GT choices as indices or letters (an unparsed
    prediction, None / "" / -1, counts as wrong), and one type string per question from ``question_types`` given
    at construction (default VideoRefer-Bench-Q's BQ, SQ, RQ, CQ, FP). ``compute()`` returns {"acc", <type>: ...};
    a type with no questions is NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, question_types: Sequence[str] = VIDEOREFER_Q_TYPES, **kwargs) -> None:
        super().__init__(**kwargs)
        if len(question_types) == 0 or len(set(question_types)) != len(question_types):
            raise ValueError(f"question_types must be non-empty and unique, got {list(question_types)}")
        self.question_types = tuple(question_types)
        k = len(self.question_types)
        self.add_state("correct", default=torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor | Sequence, target: Tensor | Sequence, question_types: Sequence[str] | str) -> None:
        """Add a batch of answered questions."""
        p = _as_indices(preds, "preds")
        t = _as_indices(target, "target")
        types = [question_types] if isinstance(question_types, str) else list(question_types)
        if not (len(p) == len(t) == len(types)):
            raise ValueError(
                f"preds, target and question_types must have the same length, got {len(p)}, {len(t)} and {len(types)}"
            )
        if bool((t < 0).any()):
            raise ValueError(f"target holds an invalid choice index {int(t[t < 0][0])}: expected >= 0")
        try:
            type_ids = torch.tensor([self.question_types.index(q) for q in types], dtype=torch.long)
        except ValueError:
            bad = next(q for q in types if q not in self.question_types)
            raise ValueError(f"unknown question type {bad!r}, expected one of {list(self.question_types)}") from None
        hit = (p == t).long()
        k = len(self.question_types)
        self.correct += torch.zeros(k, dtype=torch.long).index_add_(0, type_ids, hit).to(self.correct.device)
        self.total += torch.bincount(type_ids, minlength=k).to(self.total.device)

    def compute(self) -> dict[str, Tensor]:
        """{"acc": overall accuracy, "<type>": accuracy of that type} as float32 scalars."""
        out = {"acc": (self.correct.sum().double() / self.total.sum().double()).float()}
        per_type = self.correct.double() / self.total.double()
        for name, value in zip(self.question_types, per_type):
            out[name] = value.float()
        return out
