"""Segmentation losses on mask logits: focal + soft Dice (DESIGN.md section 6).

All functions take raw logits, never probabilities. The focal term is built from
``binary_cross_entropy_with_logits`` and ``logsigmoid``, so logits of +-100 (or more)
give finite values and gradients; the paper's code applied it to probabilities.

Shapes: ``logits`` and ``target`` are ``(B, 1, H, W)`` or ``(B, H, W)`` (either form
for either argument, same B, H, W). ``target`` is float (or bool/int) with values in
{0, 1}; the values are not checked, to avoid a device sync on every step.

Alpha convention (same as ``torchvision.ops.sigmoid_focal_loss``): ``alpha`` weights the
positive (foreground) class and ``1 - alpha`` the negative one, so the default
``alpha=0.75`` up-weights foreground pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_REDUCTIONS = ("mean", "sum", "none")


def _as_bhw(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and return both as ``(B, H, W)``; target cast to the logits dtype."""

    def squeeze(t: torch.Tensor) -> torch.Tensor:
        return t[:, 0] if t.ndim == 4 and t.shape[1] == 1 else t

    x, t = squeeze(logits), squeeze(target)
    if x.ndim != 3 or t.shape != x.shape:
        raise ValueError(
            "logits and target must both be (B, 1, H, W) or (B, H, W) with the same B, H, W; "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if not torch.is_floating_point(x):
        raise ValueError(f"logits must be a floating point tensor, got dtype {x.dtype}")
    return x, t.to(dtype=x.dtype)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 3.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) computed stably from logits.

    ``loss = -alpha_t * (1 - p_t) ** gamma * log(p_t)`` per pixel, with
    ``p_t = sigmoid(x)`` for a positive pixel and ``1 - sigmoid(x)`` for a negative one,
    ``alpha_t = alpha`` for a positive pixel and ``1 - alpha`` for a negative one.
    ``-log(p_t)`` is BCE-with-logits; ``(1 - p_t) ** gamma = exp(gamma * logsigmoid(-s))``
    with ``s = x`` (positive) or ``-x`` (negative), both finite for any finite logit.

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, H, W)`` float, any real value.
        target: same spatial shape, values in {0, 1}.
        alpha: weight of the positive class in [0, 1]; ``1 - alpha`` weights the negatives.
        gamma: focusing exponent >= 0; 0 gives alpha-weighted BCE.
        reduction: ``"mean"`` over all pixels of the batch (default), ``"sum"`` or
            ``"none"`` (a ``(B, H, W)`` tensor).

    Returns:
        A scalar (or ``(B, H, W)``) tensor in the logits' dtype, >= 0.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    x, t = _as_bhw(logits, target)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    signed = x * (2.0 * t - 1.0)  # logit of p_t
    modulating = torch.exp(gamma * F.logsigmoid(-signed))  # (1 - p_t) ** gamma
    alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
    return _reduce(alpha_t * modulating * ce, reduction)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft Dice loss on sigmoid probabilities, per sample, then averaged over the batch.

    ``loss_b = 1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` over the pixels
    of sample ``b``. For an empty target this is ``1 - smooth / (sum(p) + smooth)``: finite,
    zero only when ``p == 0`` everywhere, and its gradient pushes every probability down.

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, H, W)`` float.
        target: same spatial shape, values in {0, 1}.
        smooth: additive smoothing > 0 in numerator and denominator (pixel count units).
        reduction: ``"mean"`` over the batch (default), ``"sum"``, or ``"none"`` (``(B,)``).

    Returns:
        A scalar (or ``(B,)``) tensor in [0, 1).
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0 so an empty target gives a finite loss, got {smooth}")
    x, t = _as_bhw(logits, target)
    p = torch.sigmoid(x).flatten(1)
    t = t.flatten(1)
    intersection = (p * t).sum(dim=1)
    denominator = p.sum(dim=1) + t.sum(dim=1)
    loss = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return _reduce(loss, reduction)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 3.0,
    smooth: float = 1.0,
    focal_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """The training loss: ``focal_weight * focal + dice_weight * soft Dice`` (both means).

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, H, W)`` float mask logits.
        target: same spatial shape, values in {0, 1}; an all-zero sample is allowed.
        alpha, gamma: focal loss parameters (alpha weights the positive class).
        smooth: soft Dice smoothing.
        focal_weight, dice_weight: weights of the two terms (paper: 1 and 1).

    Returns:
        A scalar tensor.
    """
    focal = focal_loss(logits, target, alpha=alpha, gamma=gamma)
    dice = soft_dice_loss(logits, target, smooth=smooth)
    return focal_weight * focal + dice_weight * dice
