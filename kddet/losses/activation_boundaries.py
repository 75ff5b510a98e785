"""Activation boundaries, AB (Heo et al., "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons", AAAI 2019).

The student learns on which side of zero each teacher response lies, with a margin, rather than
its value. The student passes through a 1x1 conv + BN to the teacher's width, as in the paper.
"""

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import build_adapter
from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss

__all__ = ["AB", "ab_loss"]


def ab_loss(student_adapted: torch.Tensor, teacher: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """``|| rho(T) * relu(mu - S) + (1 - rho(T)) * relu(mu + S) ||_2^2`` with ``rho(x) = 1[x > 0]`` and
    margin ``mu`` (Heo et al. 2019, the activation-transfer loss), divided by the number of
    elements so that the weight does not depend on the image size."""
    student = student_adapted.float()
    active = (teacher.float() > 0).float()
    return (active * F.relu(margin - student) + (1 - active) * F.relu(margin + student)).pow(2).mean()


@KD_LOSS_REGISTRY.register()
class AB(PerLevelFeatureLoss):
    """Activation-boundary transfer on chosen FPN levels (pre-activation maps), the mean over levels."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.MARGIN = 1.0
        return node

    @configurable
    def __init__(self, *, margin: float, **kwargs):
        super().__init__(**kwargs)
        self.margin = margin

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        return dict(super().from_config(cfg, student_shapes, teacher_shapes), margin=cls.config_node(cfg).MARGIN)

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return build_adapter("conv1x1_bn", student_channels, teacher_channels)

    def level_loss(self, level: str, student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return ab_loss(student_adapted, teacher, self.margin)
