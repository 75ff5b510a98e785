"""PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022).

Standardising each channel first removes the difference in magnitude between the two FPNs, so
the MSE compares only the pattern (it equals 2 * (1 - Pearson correlation)). A student narrower
than its teacher passes through a 1x1 adapter to the teacher's width.
"""
from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch, check_feature_names, weighted

__all__ = ["PKD", "pkd_loss", "standardise_channels"]


def standardise_channels(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each channel of (N, C, H, W) maps to zero mean and unit (population) standard deviation over
    the batch and positions, as PKD's code does; a constant channel becomes 0."""
    features = features.float()
    mean = features.mean(dim=(0, 2, 3), keepdim=True)
    std = features.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (features - mean) / (std + eps)


def pkd_loss(student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean((norm(F_S) - norm(F_T))^2)`` with ``norm`` the per-channel standardisation (Cao et al. 2022)."""
    return F.mse_loss(standardise_channels(student_adapted), standardise_channels(teacher))


@KD_LOSS_REGISTRY.register()
class PKD(nn.Module):
    """PKD on chosen FPN levels, the mean over levels."""

    needs = ("features",)

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], adapters: Mapping[str, nn.Module]):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cfg.KD.PKD
        check_feature_names("PKD", node.IN_FEATURES, student_shapes, teacher_shapes)
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "adapters": {
                f: match_channels(student_shapes[f].channels, teacher_shapes[f].channels) for f in node.IN_FEATURES
            },
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [pkd_loss(self.adapters[f](student[f].float()), teacher[f]) for f in self.in_features]
        return weighted("pkd", self.weight, torch.stack(per_level).mean())
