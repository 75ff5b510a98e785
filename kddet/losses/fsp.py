"""Flow of solution procedure, FSP (Yim et al., "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", CVPR 2017).

The student matches how features change from one level to the next: the Gram matrix between
consecutive FPN levels. G is C x C, so a student narrower than its teacher first passes
through a 1x1 adapter to the teacher's width (identity when the widths agree); the paper pairs
networks of equal width and has no adapter.
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch
from .per_level import PerLevelFeatureLoss

__all__ = ["FSP", "fsp_loss", "fsp_matrix"]


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``G_ij = sum_{s,t} F1_sti F2_stj / (h w)`` (Yim et al., eq. 1): (N, C1, C2) from two
    (N, C, H, W) maps; the coarser one is upsampled (nearest, as FPN's top-down path does)."""
    first, second = first.float(), second.float()
    if first.shape[-2:] != second.shape[-2:]:
        size = max(first.shape[-2:], second.shape[-2:], key=lambda hw: hw[0] * hw[1])
        first, second = (F.interpolate(x, size=size, mode="nearest") for x in (first, second))
    h, w = first.shape[-2:]
    with torch.autocast(device_type=first.device.type, enabled=False):  # keep the float32 of the inputs
        return first.flatten(2) @ second.flatten(2).transpose(1, 2) / (h * w)


def fsp_loss(student_levels: Sequence[torch.Tensor], teacher_levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean ||G_T - G_S||_2^2`` over the images and over the pairs of consecutive levels
    (Yim et al., eq. 2, with equal lambda_i), G between level k and level k+1."""
    per_pair = [
        (fsp_matrix(t1, t2) - fsp_matrix(s1, s2)).pow(2).sum(dim=(1, 2)).mean()
        for s1, s2, t1, t2 in zip(student_levels, student_levels[1:], teacher_levels, teacher_levels[1:])
    ]
    return torch.stack(per_pair).mean()


@KD_LOSS_REGISTRY.register()
class FSP(PerLevelFeatureLoss):
    """FSP matrices between consecutive levels of IN_FEATURES, in the order given: the levels are
    compared in pairs, not one by one."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if len(self.in_features) < 2:
            raise ValueError(f"KD.FSP.IN_FEATURES needs two levels or more to pair, got {self.in_features}")

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return match_channels(student_channels, teacher_channels)

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        loss = fsp_loss(
            [self.adapters[f](student[f].float()) for f in self.in_features], [teacher[f] for f in self.in_features]
        )
        return self.weighted(self.weight, loss)
