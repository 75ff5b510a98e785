"""Overhaul of feature distillation, OFD (Heo et al., "A Comprehensive Overhaul of Feature
Distillation", ICCV 2019).

The teacher's negative responses are clipped to a per-channel margin (margin ReLU); the student
passes through a 1x1 conv + BN and is not pushed below the teacher where both are negative
(partial L2). The paper takes the margin from the BN that precedes the feature; FPN outputs have
none, so the margin is a running estimate of ``E[x | x < 0]`` per channel, kept as a buffer.
"""

from typing import Dict, Mapping

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.utils import comm

from ..adapters import build_adapter
from .build import KD_LOSS_REGISTRY, DistillationBatch
from .per_level import PerLevelFeatureLoss

__all__ = ["OFD", "NegativeMeanEstimate", "ofd_loss"]


class NegativeMeanEstimate(nn.Module):
    """A running estimate of ``E[x | x < 0]`` for each channel of (N, C, H, W) maps: a channel's
    first batch with negative values sets it, later batches move it by ``momentum``."""

    def __init__(self, num_channels: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("margin", torch.zeros(num_channels))
        self.register_buffer("batches_seen", torch.zeros(num_channels, dtype=torch.long))

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        values = features.float().transpose(0, 1).flatten(1)  # (C, N*H*W)
        negative = values < 0
        totals = torch.stack([(values * negative).sum(dim=1), negative.sum(dim=1).float()])
        if comm.get_world_size() > 1:
            # Each process sees its own images; the margins must be those of the whole batch, the
            # same everywhere, or DDP's replicas would optimise different losses. (A collective:
            # every process runs OFD at every step, as every loss does.)
            torch.distributed.all_reduce(totals)
        negative_sum, count = totals
        batch_mean = negative_sum / count.clamp(min=1)
        momentum = torch.where(self.batches_seen == 0, 1.0, self.momentum)
        momentum = torch.where(count > 0, momentum, 0.0)  # a channel without negatives says nothing
        self.margin += momentum * (batch_mean - self.margin)
        self.batches_seen += (count > 0).long()


def ofd_loss(student_transformed: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 between ``T = max(F_T, m_c)`` (margin ReLU) and the transformed student ``S``
    (Heo et al. 2019, the OFD loss): ``0`` where ``S <= T <= 0``, else ``(T - S)^2``; the mean over
    elements, where the paper sums (its scale is left to the weight).

    Args:
        margin: (C,) per-channel margins, negative.
    """
    student = student_transformed.float()
    target = torch.max(teacher.float(), margin.float().view(1, -1, 1, 1))
    counted = (student > target) | (target > 0)
    return ((target - student).pow(2) * counted).mean()


@KD_LOSS_REGISTRY.register()
class OFD(PerLevelFeatureLoss):
    """OFD on chosen FPN levels, the mean over levels; the student's transform is a 1x1 conv + BN to
    the teacher's width, and the teacher's per-channel margins learn while training."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.MARGIN_MOMENTUM = 0.01
        return node

    @configurable
    def __init__(self, *, margins: Mapping[str, NegativeMeanEstimate], **kwargs):
        super().__init__(**kwargs)
        self.margins = nn.ModuleDict(margins)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        args = super().from_config(cfg, student_shapes, teacher_shapes)  # checks the level names first
        node = cls.config_node(cfg)
        margins = {f: NegativeMeanEstimate(teacher_shapes[f].channels, node.MARGIN_MOMENTUM) for f in node.IN_FEATURES}
        return dict(args, margins=margins)

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return build_adapter("conv1x1_bn", student_channels, teacher_channels)

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        if self.training:
            for f in self.in_features:
                self.margins[f].update(batch.teacher["features"][f])
        return super().forward(batch)

    def level_loss(self, level: str, student_transformed: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return ofd_loss(student_transformed, teacher, self.margins[level].margin)
