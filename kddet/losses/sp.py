"""Similarity-preserving distillation, SP (Tung & Mori, ICCV 2019), on the box-head features of
the student's sampled proposals."""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from .build import KD_LOSS_REGISTRY, DistillationBatch, weighted
from .heads import mean_over_images

__all__ = ["SP", "sp_loss"]


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``G = Q Q^T`` with rows L2-normalised, ``L = 1/b^2 ||G_T - G_S||_F^2`` (Tung & Mori 2019,
    sec. 3), ``b`` the number of samples; ``(b, D)`` features, ``D`` may differ."""
    g_s = F.normalize(student.float() @ student.float().t(), dim=1)
    g_t = F.normalize(teacher.float() @ teacher.float().t(), dim=1)
    return (g_t - g_s).pow(2).sum() / len(g_s) ** 2


@KD_LOSS_REGISTRY.register()
class SP(nn.Module):
    """SP between student and teacher box-head features of the same RoIs, per image."""

    needs = ("box_features", "proposals")

    @configurable
    def __init__(self, *, weight: float):
        super().__init__()
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        return {"weight": cfg.KD.SP.WEIGHT}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        loss = mean_over_images(
            sp_loss, batch.student["box_features"], batch.teacher["box_features"], batch.student["proposals"]
        )
        return weighted("sp", self.weight, loss)
