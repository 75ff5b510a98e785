"""Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021).

Each channel becomes a distribution over positions (a spatial softmax); the student matches the
teacher's, so it learns where each channel fires rather than how strongly. A student narrower
than its teacher passes through a 1x1 adapter to the teacher's width.
"""
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch, check_feature_names, weighted

__all__ = ["CWD", "cwd_loss"]


def cwd_loss(student_adapted: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``tau^2 / (N C) * sum_{n,c} KL(softmax(T_nc / tau) || softmax(S_nc / tau))``, the softmax over
    the H*W positions of one channel (Shu et al. 2021, the channel-wise distillation loss)."""
    student_logits = student_adapted.float().flatten(2) / tau
    teacher_logits = teacher.float().flatten(2) / tau
    teacher_log_p = teacher_logits.log_softmax(dim=2)
    kl = (teacher_log_p.exp() * (teacher_log_p - student_logits.log_softmax(dim=2))).sum(dim=2)
    return tau**2 * kl.mean()


@KD_LOSS_REGISTRY.register()
class CWD(nn.Module):
    """Channel-wise distillation on chosen FPN levels, the mean over levels."""

    needs = ("features",)

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], adapters: Mapping[str, nn.Module], tau: float):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)
        self.tau = tau

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cfg.KD.CWD
        check_feature_names("CWD", node.IN_FEATURES, student_shapes, teacher_shapes)
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "adapters": {
                f: match_channels(student_shapes[f].channels, teacher_shapes[f].channels) for f in node.IN_FEATURES
            },
            "tau": node.TAU,
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [cwd_loss(self.adapters[f](student[f].float()), teacher[f], self.tau) for f in self.in_features]
        return weighted("cwd", self.weight, torch.stack(per_level).mean())
