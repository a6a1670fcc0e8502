"""Benchmark protocols (one module per benchmark family) and the scores they share.

    get_protocol(name) -> Callable[[model, recipe], EvalResult]
    list_benchmarks() -> list[str]
    check_split(name, split) -> None (ValueError for a split the benchmark does not have)

Families: `synthetic` (J&F + answer accuracy per task, `pixelqa.eval.synthetic`), video segmentation
(ReVOS, MeViS, Ref-YouTube-VOS, Ref-DAVIS17, Ref-SAV, GroundMoRe, and any video protocol registered with
`pixelqa.eval.official.register_protocol`: J, F, J&F, R; `pixelqa.eval.video_seg`) and image segmentation
(RefCOCO/+/g, RefClef, ReasonSeg, and any image protocol registered the same way: cIoU, gIoU, REC accuracy;
`pixelqa.eval.image_seg`). A registered protocol is a benchmark here when it is named after its source.
Each reads `<data.shards>/<benchmark>/<eval.split>/` and scores teacher-forced predictions (see `runner`);
`synthetic` is also scored by free generation (`eval.scoring=generate|both`, `pixelqa.eval.synthetic_generate`).

The paper's benchmarks as their official scripts run them (free generation, official frames, templates and
aggregation) are `pixelqa.eval.official` (one Protocol per benchmark) run by `pixelqa.eval.suite`
(`python -m pixelqa.evaluate suite=paper`); see docs/evaluation.md. A diagnostic apart: `pixelqa.eval.seg_selection`
(which object each `<|seg|>` of the synthetic split selects).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelqa.eval.runner import EvalResult


def __getattr__(name: str) -> Any:
    """`EvalResult`, imported on first use: the protocols import torchmetrics, seconds that the CLIs of this package
    (`python -m pixelqa.eval.judge|seg_selection --help`) should not wait for."""
    if name == "EvalResult":
        from pixelqa.eval.runner import EvalResult

        return EvalResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_benchmarks() -> list[str]:
    """Every benchmark name `get_protocol` knows."""
    from pixelqa.eval.image_seg import image_seg_benchmarks
    from pixelqa.eval.video_seg import video_seg_benchmarks

    return ["synthetic", *video_seg_benchmarks(), *image_seg_benchmarks()]


def get_protocol(name: str) -> Callable[..., EvalResult]:
    """The protocol function of a benchmark: fn(model, recipe, num_overlays=4) -> EvalResult."""
    from pixelqa.eval.image_seg import evaluate_image_seg, image_seg_benchmarks
    from pixelqa.eval.synthetic import evaluate_synthetic
    from pixelqa.eval.video_seg import evaluate_video_seg, video_seg_benchmarks

    if name == "synthetic":
        return evaluate_synthetic
    if name in video_seg_benchmarks():
        return partial(evaluate_video_seg, source=name)
    if name in image_seg_benchmarks():
        return partial(evaluate_image_seg, source=name)
    raise ValueError(f"eval.benchmark: got {name!r}, expected one of {list_benchmarks()}")


def check_split(name: str, split: str) -> None:
    """Raise ValueError when `split` is not a split benchmark `name` has (its converter's declared splits)."""
    from pixelqa.data.catalog import get_source  # imports every converter: only when a run is checked

    valid = get_source(name).splits
    if valid and split not in valid:
        # the split names a shard folder: a wrong one would otherwise fail deep in the protocol, after model loading
        raise ValueError(
            f"eval.split={split!r} is not valid for eval.benchmark={name}; valid choices: {', '.join(valid)}"
        )


__all__: list[Any] = ["EvalResult", "check_split", "get_protocol", "list_benchmarks"]
