"""The PLRC encoder (backbone + dense head g + distillation head h) and its momentum (EMA) copy.

Shorthand: N images, C backbone channels of IN_FEATURE, D embedding dim, d_u distillation dim, h x w map.
"""
import copy
from typing import Dict, List

import torch
from torch import nn

from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from .heads import DenseHead, DistillHead

__all__ = ["PLRCEncoder", "zero_init_residual", "make_momentum_copy", "ema_update_"]


class PLRCEncoder(nn.Module):
    """images (N, 3, S, S) normalised -> {"dense": g (N, D, h, w), "u": h (N, d_u, h, w)} on IN_FEATURE."""

    def __init__(self, *, backbone: nn.Module, in_feature: str, dense_head: DenseHead, distill_head: DistillHead):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.dense_head = dense_head
        self.distill_head = distill_head

    def forward(self, images: torch.Tensor, dense: bool = True, distill: bool = True) -> Dict[str, torch.Tensor]:
        """Runs only the heads asked for (V_d needs no g: one head forward less)."""
        feat = self.backbone(images)[self.in_feature]
        out = {}
        if dense:
            out["dense"] = self.dense_head(feat)
        if distill:
            out["u"] = self.distill_head(feat)
        return out


def zero_init_residual(backbone: nn.Module) -> int:
    """Sets the gamma of the last norm of every residual block to 0 (each block starts as identity).

    Returns the number of blocks changed.
    """
    count = 0
    for m in backbone.modules():
        last = m.conv3 if isinstance(m, BottleneckBlock) else m.conv2 if isinstance(m, BasicBlock) else None
        if last is not None and getattr(last.norm, "weight", None) is not None:
            nn.init.zeros_(last.norm.weight)
            count += 1
    return count


def make_momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy with every parameter frozen (updated only by `ema_update_`)."""
    momentum = copy.deepcopy(online)
    for p in momentum.parameters():
        p.requires_grad_(False)
    return momentum


@torch.no_grad()
def ema_update_(momentum_params: List[torch.Tensor], online_params: List[torch.Tensor], m: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q for every parameter (buffers such as BN statistics are not
    averaged: the momentum encoder's BN keeps its own running statistics). One fused foreach kernel."""
    if m >= 1.0:
        return
    torch._foreach_lerp_(momentum_params, online_params, 1.0 - m)
