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


def released_mask_losses(
    raw_multi: torch.Tensor,
    ious_multi: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    image_size: int,
    focal_weight: float = 100.0,
    dice_weight: float = 5.0,
) -> dict[str, torch.Tensor]:
    """One sample's mask losses as the released training computes them (SAM 2's multimask losses).

    raw_multi (K, T, M, h, w) every candidate's logits before object gating; ious_multi (K, T, M); scores (K, T)
    objectness logits; targets (K, T, H, W) bool; valid (K, T) bool (frame annotated). Candidates and targets are
    compared at SAM's input resolution (`image_size`). Per frame: focal, dice and IoU-L1 per object and candidate,
    each divided by the object count K; the candidate with the lowest focal_weight * focal + dice_weight * dice
    gets the focal and dice loss, the IoU head is trained on all M (their mean); all three only where the object
    is present; objectness = BCE on every frame. Summed over objects, averaged over the T frames (frames not
    annotated count as absent from every term). Returns {"focal", "dice", "iou", "objectness"} for the sample.
    """
    K, T, M = raw_multi.shape[:3]
    if targets.shape[:2] != (K, T):
        raise ValueError(f"seg_masks: got shape {tuple(targets.shape)}, expected ({K}, {T}, H, W)")
    if valid.shape != (K, T):
        raise ValueError(f"seg_valid: got shape {tuple(valid.shape)}, expected {(K, T)}")
    size = (image_size, image_size)
    # (K, T, M, h, w) -> (K*T, M, S, S): SAM 2 upsamples its low-res logits for the losses
    x = F.interpolate(raw_multi.float().flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    t = F.interpolate(targets.float().flatten(0, 1)[:, None], size=size, mode="bilinear", antialias=True) > 0
    t = t.float().expand_as(x)  # (K*T, M, S, S)
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).flatten(2).mean(-1) / K  # (K*T, M)
    dice = 1 - (2 * (prob * t).flatten(2).sum(-1) + 1) / (prob.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    dice = dice / K
    pred = (x.detach() > 0).flatten(2)
    gt = t.flatten(2) > 0
    actual = (pred & gt).sum(-1).float() / (pred | gt).sum(-1).float().clamp(min=1.0)
    iou = (ious_multi.float().flatten(0, 1) - actual).abs() / K  # (K*T, M)
    best = torch.argmin(focal_weight * focal + dice_weight * dice, dim=-1)  # (K*T,)
    rows = torch.arange(best.shape[0], device=best.device)
    present = t[:, 0].flatten(1).any(-1).float()  # (K*T,)
    use = present * valid.flatten().float()
    objectness = F.binary_cross_entropy_with_logits(scores.float().flatten(), present, reduction="none") / K
    return {
        "focal": (focal[rows, best] * use).sum() / T,
        "dice": (dice[rows, best] * use).sum() / T,
        "iou": (iou.mean(-1) * use).sum() / T,
        "objectness": (objectness * valid.flatten().float()).sum() / T,
    }
