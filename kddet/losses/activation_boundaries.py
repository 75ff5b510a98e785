"""Activation boundaries, AB (Heo et al., "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI 2019).

The student learns on which side of zero each teacher response lies, with a margin, rather than
its value. The student passes through a 1x1 conv + BN to the teacher's width, as in the paper.
"""
from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..adapters import build_adapter
from .build import KD_LOSS_REGISTRY, DistillationBatch, check_feature_names, weighted

__all__ = ["AB", "ab_loss"]


def ab_loss(student_adapted: torch.Tensor, teacher: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """``|| rho(T) * relu(mu - S) + (1 - rho(T)) * relu(mu + S) ||_2^2`` with ``rho(x) = 1[x > 0]`` and
    margin ``mu`` (Heo et al. 2019, the activation-transfer loss), divided by the number of
    elements so that the weight does not depend on the image size."""
    student = student_adapted.float()
    active = (teacher.float() > 0).float()
    return (active * F.relu(margin - student) + (1 - active) * F.relu(margin + student)).pow(2).mean()


@KD_LOSS_REGISTRY.register()
class AB(nn.Module):
    """Activation-boundary transfer on chosen FPN levels (pre-activation maps), the mean over levels."""

    needs = ("features",)

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], adapters: Mapping[str, nn.Module], margin: float):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)
        self.margin = margin

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cfg.KD.AB
        check_feature_names("AB", node.IN_FEATURES, student_shapes, teacher_shapes)
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "adapters": {
                f: build_adapter("conv1x1_bn", student_shapes[f].channels, teacher_shapes[f].channels)
                for f in node.IN_FEATURES
            },
            "margin": node.MARGIN,
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [ab_loss(self.adapters[f](student[f].float()), teacher[f], self.margin) for f in self.in_features]
        return weighted("ab", self.weight, torch.stack(per_level).mean())
