"""UniPixel losses: LM cross-entropy and SAM 2-style mask losses (focal, dice, IoU-MAE, objectness CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE: logits (B, L, V), labels (B, L) with -100 masked; 0 (in the graph) if nothing is labelled."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return shift_logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-mask focal loss, mean over pixels: logits/targets (N, H, W) -> (N,)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss: logits/targets (N, H, W) -> (N,)."""
    prob = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    num = 2 * (prob * t).sum(1)
    den = prob.sum(1) + t.sum(1)
    return 1 - (num + eps) / (den + eps)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised prediction (logit > 0) with the target: (N, H, W) -> (N,), no gradient."""
    pred = (logits.detach() > 0).flatten(1)
    t = targets.flatten(1) > 0.5
    inter = (pred & t).sum(1).float()
    union = (pred | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def iou_mae_loss(pred_iou: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """|predicted IoU - actual IoU| per mask: (N,), (N, H, W), (N, H, W) -> (N,)."""
    return (pred_iou.float() - actual_iou(logits, targets)).abs()


def objectness_loss(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Binary CE of objectness logits (N,) against object-present flags (N,) -> (N,)."""
    return F.binary_cross_entropy_with_logits(scores.float(), present.float(), reduction="none")


def mask_losses(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, pred_ious: torch.Tensor, scores: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mask losses of one sample's K objects over T frames.

    logits (K, T, H, W) float; targets (K, T, H, W) bool; valid (K, T) bool (frame annotated); pred_ious and
    scores (K, T). Focal / dice / IoU on valid frames where the object is present (as SAM 2 trains); objectness
    on all valid frames. Returns sums and counts so a batch can average over all masks:
    {"focal", "dice", "iou", "objectness"} sums and {"n_mask", "n_obj"} counts.
    """
    K, T = logits.shape[:2]
    if targets.shape != logits.shape:
        raise ValueError(f"seg_masks: got shape {tuple(targets.shape)}, expected {tuple(logits.shape)}")
    if valid.shape != (K, T):
        raise ValueError(f"seg_valid: got shape {tuple(valid.shape)}, expected {(K, T)}")
    t = targets.float().flatten(0, 1)  # (K*T, H, W)
    x = logits.float().flatten(0, 1)
    v = valid.flatten().bool()
    present = t.flatten(1).any(1)
    use = v & present
    zero = logits.sum() * 0.0
    out = {"focal": zero, "dice": zero, "iou": zero, "objectness": zero + scores.sum() * 0.0}
    if bool(use.any()):
        out["focal"] = sigmoid_focal_loss(x[use], t[use]).sum()
        out["dice"] = dice_loss(x[use], t[use]).sum()
        out["iou"] = iou_mae_loss(pred_ious.flatten()[use], x[use], t[use]).sum()
    if bool(v.any()):
        out["objectness"] = objectness_loss(scores.flatten()[v], present[v]).sum()
    out["n_mask"] = use.sum()
    out["n_obj"] = v.sum()
    return out
