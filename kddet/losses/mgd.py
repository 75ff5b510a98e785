"""Masked generative distillation, MGD (Yang et al., "Masked Generative Distillation", ECCV 2022).

A random fraction ``lambda`` of the student's positions is zeroed, and a small generator (3x3
conv, ReLU, 3x3 conv) must rebuild the teacher's whole map from what is left:

    L = alpha * sum_levels 1/N * sum_{n,c,h,w} (G(f_align(S) * M) - T)^2,   M_hw = 0 with prob. lambda,

summed over the levels as the authors' one loss per FPN level is, and divided by the batch size
``N``. The generator (and ``f_align``, a 1x1 conv when the widths differ) are trained adapters,
dropped by the student export. The authors' Faster R-CNN settings (yzd-v/MGD,
``det/configs/distillers/mgd/``): alpha 5e-7, lambda 0.45, on p2-p5.
"""

from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, check_feature_names

__all__ = ["MGD", "mgd_level_loss", "random_keep_mask"]


def random_keep_mask(features: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """An (N, 1, H, W) map of 0 (dropped, with probability ``mask_ratio``) and 1 (kept), drawn
    from torch's default generator on the features' device."""
    n, _, h, w = features.shape
    draw = torch.rand((n, 1, h, w), device=features.device)
    return (draw <= 1 - mask_ratio).float()


def mgd_level_loss(generated: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1/N * sum (G - T)^2`` of one level, N the batch size."""
    return (generated - teacher.float()).pow(2).sum() / teacher.shape[0]


def build_generator(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    )


@KD_LOSS_REGISTRY.register()
class MGD(DistillationLoss):
    """MGD on chosen FPN levels, summed over levels; ``WEIGHT`` is the authors' alpha."""

    needs = ("features",)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 5e-7  # alpha_mgd of the authors' Faster R-CNN configs
        node.MASK_RATIO = 0.45  # lambda_mgd: the fraction of positions zeroed
        node.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        return node

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        mask_ratio: float,
        in_features: Sequence[str],
        aligns: Mapping[str, nn.Module],
        generators: Mapping[str, nn.Module],
    ):
        super().__init__()
        self.weight = weight
        self.mask_ratio = mask_ratio
        self.in_features = list(in_features)
        self.aligns = nn.ModuleDict(aligns)
        self.generators = nn.ModuleDict(generators)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        check_feature_names("MGD", node.IN_FEATURES, student_shapes, teacher_shapes)
        if not 0.0 <= node.MASK_RATIO < 1.0:
            raise ValueError(
                f"KD.MGD.MASK_RATIO = {node.MASK_RATIO}: the fraction of positions zeroed must be in [0, 1)."
            )
        return {
            "weight": node.WEIGHT,
            "mask_ratio": node.MASK_RATIO,
            "in_features": node.IN_FEATURES,
            "aligns": {
                f: match_channels(student_shapes[f].channels, teacher_shapes[f].channels) for f in node.IN_FEATURES
            },
            "generators": {f: build_generator(teacher_shapes[f].channels) for f in node.IN_FEATURES},
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        losses = []
        with torch.autocast(device_type=student[self.in_features[0]].device.type, enabled=False):
            for f in self.in_features:
                aligned = self.aligns[f](student[f].float())
                generated = self.generators[f](aligned * random_keep_mask(aligned, self.mask_ratio))
                losses.append(mgd_level_loss(generated, teacher[f]))
        return self.weighted(self.weight, torch.stack(losses).sum())
