"""Attention transfer, AT (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

The student matches where the teacher's features are strong, summed over channels, so the two
widths need not agree and no adapter is trained.
"""

from typing import Mapping

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss

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
class AT(PerLevelFeatureLoss):
    """Attention transfer on chosen FPN levels, the mean over levels; WEIGHT is the paper's beta."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.P = 2.0
        return node

    @configurable
    def __init__(self, *, p: float, **kwargs):
        super().__init__(**kwargs)
        self.p = p

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        return dict(super().from_config(cfg, student_shapes, teacher_shapes), p=cls.config_node(cfg).P)

    def level_loss(self, level: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return at_loss(student, teacher, self.p)
