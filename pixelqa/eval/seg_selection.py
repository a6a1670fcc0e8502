"""Which shape does a `<|seg|>` select? `python -m pixelqa.eval.seg_selection MODEL [--samples N]`.

J&F mixes two failures: a mask of the wrong object, and a poor mask of the right one. This scores the predicted mask
of N synthetic validation-split samples of each segmentation task (samples 0..N-1 drawn with that task;
teacher-forced, as `val/J&F` scores) against *every* object of its sample. It reports the share of masks whose
best-matching object is the target, another object, or none (an empty mask), the mean IoU with the target and with
the best-matching object, and the share a random pick among the sample's objects would find (chance). It also looks
at SAM's candidate masks on the prompted frame (three under the released multimask decoding): the share of samples
where some candidate is a mask of the target (`target_in_candidates`) against the share where the candidate SAM's IoU
head ranks first is (`target_ranked_first`). On the embedded demo it showed that J&F is capped by the selection, and
that the selection is lost in the IoU head's ranking, not in the candidates (docs/benchmarks.md, demo, third and
fourth pass). MODEL: a Lightning checkpoint, a run folder, a save_pretrained or released folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and numpy are imported where used: `--help` answers without them
    import torch

SEG_TASKS = ("res", "rec", "rvos", "reasonseg", "reason_vos")
KINDS = ("target", "other", "empty")


def classify(pred: torch.Tensor, objects: torch.Tensor, target: int) -> tuple[str, float, float]:
    """(kind, IoU with the target, IoU with the best-matching object) of a mask (T, H, W) among objects (K, T, H, W).

    kind: "empty" for an empty mask, "target" when the target is the object it overlaps most, else "other".
    """
    if objects.dim() != 4 or pred.shape != objects.shape[1:]:
        raise ValueError(
            f"pred/objects: got {tuple(pred.shape)} / {tuple(objects.shape)}, expected (T,H,W) / (K,T,H,W)"
        )
    if not 0 <= target < objects.shape[0]:
        raise ValueError(f"target: got {target}, expected 0 <= target < {objects.shape[0]}")
    pred, objects = pred.bool(), objects.bool()
    inter = (pred[None] & objects).flatten(1).sum(-1).float()
    union = (pred[None] | objects).flatten(1).sum(-1).float().clamp(min=1)
    iou = inter / union
    if not pred.any():
        kind = "empty"
    else:
        kind = "target" if int(iou.argmax()) == target else "other"
    return kind, float(iou[target]), float(iou.max())


def candidates_of(logits: torch.Tensor, ious: torch.Tensor, objects: torch.Tensor, target: int) -> tuple[bool, bool]:
    """(some candidate is a mask of the target, the candidate ranked first is) for one object's candidate logits
    (M, h, w) and predicted IoUs (M,) on a frame whose objects are (K, H, W); a candidate is "of the target" when it
    is not empty and overlaps the target most (`classify`)."""
    if logits.dim() != 3 or ious.shape != logits.shape[:1] or objects.dim() != 3:
        raise ValueError(
            f"logits/ious/objects: got {tuple(logits.shape)} / {tuple(ious.shape)} / {tuple(objects.shape)}, "
            "expected (M,h,w) / (M,) / (K,H,W)"
        )
    import torch

    up = torch.nn.functional.interpolate(logits[:, None].float(), size=objects.shape[-2:], mode="bilinear") > 0
    hits = [classify(m, objects[:, None], target)[0] == "target" for m in up]  # each (1, H, W) against (K, 1, H, W)
    return any(hits), hits[int(ious.argmax())]


class PromptedFrameCandidates:
    """Keeps the candidate logits and IoUs of SAM's first mask-decoder call of a forward (the prompted frame)."""

    def __init__(self, sam_mask_decoder: torch.nn.Module):
        self.logits: torch.Tensor | None = None
        self.ious: torch.Tensor | None = None
        self.handle = sam_mask_decoder.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, outputs: tuple) -> None:
        if self.logits is None:  # SAM 2's mask decoder returns (masks, iou_pred, tokens, object scores)
            self.logits, self.ious = outputs[0].detach(), outputs[1].detach()

    def reset(self) -> None:
        """Forget the last forward's candidates."""
        self.logits = self.ious = None


def selection(model: torch.nn.Module, samples_per_task: int, num_frames: int = 4) -> dict:
    """The selection figures of `model` on the first `samples_per_task` validation samples of each seg task."""
    import numpy as np
    import torch

    from pixelqa.data.collate import Collator
    from pixelqa.data.loader import object_masks, subsample_frames
    from pixelqa.data.synthetic import make_sample

    collator = Collator(model.processor, num_frames=num_frames, max_tokens=1024)
    kinds: list[str] = []
    on_target, best, chance, in_candidates, ranked_first = [], [], [], [], []
    model.eval()
    candidates = PromptedFrameCandidates(model.mask_decoder.sam.sam_mask_decoder)
    try:
        for task in SEG_TASKS:
            for i in range(samples_per_task):
                sample = subsample_frames(make_sample(i, split="val", seed=0, task=task), num_frames)
                batch = collator.assemble([collator.encode(sample)])
                candidates.reset()
                with torch.no_grad():
                    pred = model(batch).pred_masks[0][0] > 0  # the sample's one <|seg|>: (T, H, W)
                ids = sorted(sample.objects)
                masks, _ = object_masks(sample, ids)
                objects, target = torch.from_numpy(np.ascontiguousarray(masks)), ids.index(sample.meta["target"])
                kind, iou_t, iou_b = classify(pred, objects, target)
                kinds.append(kind)
                on_target.append(iou_t)
                best.append(iou_b)
                chance.append(1.0 / len(ids))
                some, first = candidates_of(candidates.logits[0], candidates.ious[0], objects[:, 0], target)
                in_candidates.append(some)
                ranked_first.append(first)
    finally:
        candidates.handle.remove()
    n = len(kinds)
    out = {k: kinds.count(k) / n for k in KINDS}
    out.update(
        chance=float(np.mean(chance)),
        iou_target=float(np.mean(on_target)),
        iou_best=float(np.mean(best)),
        target_in_candidates=float(np.mean(in_candidates)),
        target_ranked_first=float(np.mean(ranked_first)),
        samples=n,
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Print the selection figures of a model as one JSON line; bad arguments exit 2 with one line."""
    ap = argparse.ArgumentParser(prog="python -m pixelqa.eval.seg_selection", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="Lightning checkpoint, run folder, save_pretrained or released folder")
    ap.add_argument("--samples", type=int, default=40, help="validation samples of each seg task (default 40)")
    ap.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint needing full unpickling")
    args = ap.parse_args(argv)
    if args.samples < 1:
        print(f"error: --samples: got {args.samples}, expected an integer >= 1", file=sys.stderr)
        sys.exit(2)
    from pixelqa.checkpoints import CheckpointError
    from pixelqa.predict.errors import PredictInputError
    from pixelqa.predict.loading import load_model

    try:
        model, _ = load_model(args.model, "cpu", trust=args.trust_checkpoint)
    except (PredictInputError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in selection(model, args.samples).items()})
    )


if __name__ == "__main__":
    main()
