"""Attention transfer, AT (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

The student matches where the teacher's features are strong, summed over channels, so the two
widths need not agree and no adapter is trained.
"""
from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .build import KD_LOSS_REGISTRY, DistillationBatch, check_feature_names, weighted

__all__ = ["AT", "at_loss", "attention_map"]


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``Q = sum_c |F_c|^p``, flattened and L2-normalised: (N, H*W) from (N, C, H, W) (Zagoruyko &
    Komodakis, the activation-based attention map)."""
    return F.normalize(features.float().abs().pow(p).sum(dim=1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``1/2 * mean_n ||Q_S/|Q_S| - Q_T/|Q_T| ||_2^2`` over the images of a batch (the AT loss
    without its beta); the maps must have the same spatial size."""
    difference = attention_map(student, p) - attention_map(teacher, p)
    return 0.5 * difference.pow(2).sum(dim=1).mean()


@KD_LOSS_REGISTRY.register()
class AT(nn.Module):
    """Attention transfer on chosen FPN levels, the mean over levels; WEIGHT is the paper's beta."""

    needs = ("features",)

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], p: float):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.p = p

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cfg.KD.AT
        check_feature_names("AT", node.IN_FEATURES, student_shapes, teacher_shapes)
        return {"weight": node.WEIGHT, "in_features": node.IN_FEATURES, "p": node.P}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [at_loss(student[f], teacher[f], self.p) for f in self.in_features]
        return weighted("at", self.weight, torch.stack(per_level).mean())
