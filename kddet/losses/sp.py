"""Similarity-preserving distillation, SP (Tung & Mori, ICCV 2019), on the box-head features of
the student's sampled proposals."""

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode

from .build import KD_LOSS_REGISTRY
from .roi_relation import RoIRelationLoss

__all__ = ["SP", "sp_loss"]


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``G = Q Q^T`` with rows L2-normalised, ``L = 1/b^2 ||G_T - G_S||_F^2`` (Tung & Mori 2019,
    sec. 3), ``b`` the number of samples; ``(b, D)`` features, ``D`` may differ."""
    student, teacher = student.float(), teacher.float()
    # Autocast would run these matmuls in fp16, whose largest value (65504) a row's self dot product
    # passes at about x12 of unit-scale box-head features: G turns Inf and the loss NaN.
    with torch.autocast(device_type=student.device.type, enabled=False):
        g_s = F.normalize(student @ student.t(), dim=1)
        g_t = F.normalize(teacher @ teacher.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / len(g_s) ** 2


@KD_LOSS_REGISTRY.register()
class SP(RoIRelationLoss):
    """SP between student and teacher box-head features of the same RoIs, per image."""

    relation_loss = staticmethod(sp_loss)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 3000.0  # Tung & Mori's gamma
        return node
