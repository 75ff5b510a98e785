"""FitNets hints (Romero et al., ICLR 2015), as used on detectors by Chen et al. 2017."""
from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ..adapters import build_adapter
from .build import KD_LOSS_REGISTRY, DistillationBatch, check_feature_names, weighted

__all__ = ["FitNet", "fitnet_hint_loss"]


def fitnet_hint_loss(student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``L = 1/2 * mean((F_T - r(F_S))^2)`` over all elements (Romero et al., eq. 3)."""
    return 0.5 * (teacher.float() - student_adapted.float()).pow(2).mean()


@KD_LOSS_REGISTRY.register()
class FitNet(nn.Module):
    """Hint loss on chosen FPN levels through a per-level 1x1 or 3x3 adapter; the mean over levels."""

    needs = ("features",)

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], adapters: Mapping[str, nn.Module]):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cfg.KD.FITNET
        check_feature_names("FitNet", node.IN_FEATURES, student_shapes, teacher_shapes)
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "adapters": {
                f: build_adapter(node.ADAPTER, student_shapes[f].channels, teacher_shapes[f].channels)
                for f in node.IN_FEATURES
            },
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [fitnet_hint_loss(self.adapters[f](student[f]), teacher[f]) for f in self.in_features]
        return weighted("fitnet", self.weight, torch.stack(per_level).mean())
