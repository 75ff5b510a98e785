"""Knowledge review, ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021).

Each student level is compared with the teacher's after attention-based fusion (ABF) with the
deeper student levels: going from the deepest level up, a level's 1x1-projected map is blended
with the fused map of the level below it (upsampled), the blend weights given per position by a
1x1 conv and a sigmoid on both, then a 3x3 conv maps the result to the teacher's width. The
fused maps are compared by the hierarchical context loss (HCL):

    HCL(S, T) = (mse(S, T) + sum_{l in 4, 2, 1; l < H} 2^-k mse(pool_l(S), pool_l(T))) / (1 + sum 2^-k),

``k`` = 1, 2, 3 for l = 4, 2, 1 and ``pool_l`` the adaptive average pool to l x l; the loss is
``WEIGHT * sum_levels HCL``. The ABF modules are trained adapters, dropped by the student export.
The authors' Faster R-CNN settings (dvlab-research/ReviewKD ``Detection/``, megvii-research/
mdistiller ``detection/``): every FPN level (p2-p6), 256 middle channels, weight 1.0 (1.2 for
their R18 student, 2.0 for MobileNetV2).
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, check_feature_names

__all__ = ["AttentionFusion", "ReviewKD", "hierarchical_context_loss"]


def hierarchical_context_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """HCL of one level (the formula above), pooling to 4x4, 2x2 and 1x1 where the map is taller."""
    loss = F.mse_loss(student, teacher)
    weight, total = 1.0, 1.0
    for size in (4, 2, 1):
        if size >= student.shape[-2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


class AttentionFusion(nn.Module):
    """ABF: project the student's level to ``mid_channels``, blend it with the fused deeper level
    (``fuse``), and map the blend to the teacher's width. Returns (output, blend); the blend is
    what the next (shallower) level fuses with."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Conv2d(2 * mid_channels, 2, kernel_size=1) if fuse else None
        nn.init.kaiming_uniform_(self.project[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.project(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            blend = torch.sigmoid(self.attention(torch.cat([x, deeper], dim=1)))
            x = x * blend[:, :1] + deeper * blend[:, 1:]
        return self.output(x), x


@KD_LOSS_REGISTRY.register()
class ReviewKD(DistillationLoss):
    """ReviewKD on chosen FPN levels (in ``IN_FEATURES`` order, shallow to deep), summed over levels."""

    needs = ("features",)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]  # shallow to deep: fusion runs from the last
        node.MID_CHANNELS = 256
        return node

    @configurable
    def __init__(self, *, weight: float, in_features: Sequence[str], fusions: Mapping[str, nn.Module]):
        """
        Args:
            in_features: the levels, shallow to deep.
            fusions: per level, its ABF; the deepest one fuses nothing.
        """
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.fusions = nn.ModuleDict(fusions)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        levels = list(node.IN_FEATURES)
        check_feature_names("ReviewKD", levels, student_shapes, teacher_shapes)
        strides = [student_shapes[f].stride for f in levels]
        if strides != sorted(strides) or len(set(strides)) != len(strides):
            raise ValueError(f"KD.REVIEWKD.IN_FEATURES = {levels} must go from shallow to deep (strides {strides}).")
        return {
            "weight": node.WEIGHT,
            "in_features": levels,
            "fusions": {
                f: AttentionFusion(
                    student_shapes[f].channels, node.MID_CHANNELS, teacher_shapes[f].channels, f != levels[-1]
                )
                for f in levels
            },
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        losses, deeper = [], None
        with torch.autocast(device_type=student[self.in_features[0]].device.type, enabled=False):
            for f in reversed(self.in_features):
                fused, deeper = self.fusions[f](student[f].float(), deeper)
                losses.append(hierarchical_context_loss(fused, teacher[f].float()))
        return self.weighted(self.weight, torch.stack(losses).sum())
