"""Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021).

Each channel becomes a distribution over positions (a spatial softmax); the student matches the
teacher's, so it learns where each channel fires rather than how strongly. A student narrower
than its teacher passes through a 1x1 adapter to the teacher's width.
"""

from typing import Mapping

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss

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
class CWD(PerLevelFeatureLoss):
    """Channel-wise distillation on chosen FPN levels, the mean over levels."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.TAU = 1.0
        return node

    @configurable
    def __init__(self, *, tau: float, **kwargs):
        super().__init__(**kwargs)
        self.tau = tau

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        return dict(super().from_config(cfg, student_shapes, teacher_shapes), tau=cls.config_node(cfg).TAU)

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return match_channels(student_channels, teacher_channels)

    def level_loss(self, level: str, student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return cwd_loss(student_adapted, teacher, self.tau)
