"""The shape most feature losses share: one comparison per FPN level of ``IN_FEATURES``, the
student passed through a per-level adapter first, the mean over levels times ``WEIGHT``."""

from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import TermSchedule
from .build import DistillationBatch, DistillationLoss, check_feature_names

__all__ = ["PerLevelFeatureLoss"]


class PerLevelFeatureLoss(DistillationLoss):
    """Subclasses define ``level_loss(level, student_adapted, teacher)`` and, when the student is
    adapted, ``build_adapter(node, student channels, teacher channels)`` (identity otherwise); their
    node has WEIGHT and IN_FEATURES, to which ``default_config`` and ``from_config`` may add options
    of their own. A loss that compares levels jointly (FSP) overrides ``forward`` instead
    of ``level_loss`` and keeps the adapters, weight and levels."""

    needs = ("features",)
    schedule = TermSchedule()  # constant, unless a subclass's options ask for one

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        return node

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], adapters: Mapping[str, nn.Module]):
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        check_feature_names(cls.__name__, node.IN_FEATURES, student_shapes, teacher_shapes)
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "adapters": {
                f: cls.build_adapter(node, student_shapes[f].channels, teacher_shapes[f].channels)
                for f in node.IN_FEATURES
            },
        }

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return nn.Identity()

    def level_loss(self, level: str, student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        per_level = [
            self.level_loss(
                f, self.adapters[f](self.schedule.student_input(student[f], batch.iteration).float()), teacher[f]
            )
            for f in self.in_features
        ]
        return self.weighted(self.schedule.weight(self.weight, batch.iteration), torch.stack(per_level).mean())
