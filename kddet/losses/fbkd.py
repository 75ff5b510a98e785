"""Feature-based knowledge distillation, FBKD (Zhang & Ma, "Improve Object Detection with
Feature-based Knowledge Distillation: Towards Accurate and Efficient Detectors", ICLR 2021).

Attention-guided and non-local distillation, per level, as mmrazor implements it:

    A^S = H W softmax(mean_c |F| / T),   (the spatial attention; the channel one is not used)
    L = w_feat   * sqrt(sum (A^S_T + A^S_S)/2 * (T - conv1x1(S))^2)
      + w_chan   * || mean_hw(T) - linear(mean_hw(S)) ||
      + w_space  * || mean_c(T) - conv3x3(mean_c(S)) ||
      + w_nonloc * || NL_T(T) - conv1x1(NL_S(S)) ||,

the norms over the whole batch, the average attention detached, ``NL`` a non-local block
(dot-product pairwise weights over ``g`` and ``phi`` max-pooled by 2 then by the level's
MAXPOOL_STRIDES entry, output conv followed by a zero-initialised BatchNorm). Levels are summed, as
mmrazor's one loss per level is, and WEIGHT multiplies the sum. All of the adaptation layers and
both non-local blocks are trained adapters, dropped by the student export; a student narrower than
its teacher passes through a 1x1 conv first. The settings of mmrazor's Faster R-CNN config
(``configs/distill/mmdet/fbkd/fbkd_fpn_faster-rcnn_r101_faster-rcnn_r50_1x_coco.py``): p2-p5,
reductions 4, 4, 2, 2 and max-pool strides 8, 4, 2, 2, temperature 0.5, weights 7e-5, 4e-3,
4e-3, 7e-5 (the defaults of ``FBKDLoss``, from the authors' code).
"""

from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, check_feature_names

__all__ = ["FBKD", "FBKDLevel", "NonLocalBlock", "spatial_attention"]


def spatial_attention(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, 1, H, W) attention ``H W softmax(mean_c |F| / T)`` over the positions."""
    n, _, h, w = features.shape
    magnitude = features.abs().mean(dim=1).view(n, -1)
    return (h * w * F.softmax(magnitude / temperature, dim=1)).view(n, 1, h, w)


class NonLocalBlock(nn.Module):
    """``x + BN(conv(W g(x)))`` with ``W = theta(x)^T phi(x) / (number of pooled positions)``, ``g`` and
    ``phi`` 1x1 convs followed by 2x2 then ``pool_stride`` max-pooling (mmcv's NonLocal2d,
    dot-product mode, sub-sampled, inside mmrazor's NonLocal2dMaxpoolNstride). The 1x1 convs
    start as N(0, 0.01), the BatchNorm at zero, so the block starts as the identity."""

    def __init__(self, channels: int, reduction: int, pool_stride: int):
        super().__init__()
        inner = max(channels // reduction, 1)
        self.pool_stride = pool_stride
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels))
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2 * self.pool_stride:
            raise ValueError(
                f"FBKD's non-local block max-pools by 2 x {self.pool_stride}, more than a {tuple(x.shape[-2:])} "
                "map allows: lower the level's KD.FBKD.MAXPOOL_STRIDES entry or use larger images."
            )
        return F.max_pool2d(F.max_pool2d(x, 2), self.pool_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        g = self.pooled(self.g(x)).flatten(2).transpose(1, 2)  # (N, P, C')
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        phi = self.pooled(self.phi(x)).flatten(2)  # (N, C', P)
        pairwise = torch.bmm(theta, phi) / phi.shape[-1]
        y = torch.bmm(pairwise, g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


class FBKDLevel(nn.Module):
    """The trained parts of one level: the student's adaptation layers and both non-local blocks."""

    def __init__(self, channels: int, reduction: int, pool_stride: int):
        super().__init__()
        self.channel_adaptation = nn.Linear(channels, channels)
        self.spatial_adaptation = nn.Conv2d(1, 1, kernel_size=3, padding=1)
        self.feature_adaptation = nn.Conv2d(channels, channels, kernel_size=1)
        self.student_non_local = NonLocalBlock(channels, reduction, pool_stride)
        self.non_local_adaptation = nn.Conv2d(channels, channels, kernel_size=1)
        self.teacher_non_local = NonLocalBlock(channels, reduction, pool_stride)

    def loss(
        self, student: torch.Tensor, teacher: torch.Tensor, temperature: float, weights: Sequence[float]
    ) -> torch.Tensor:
        feature_weight, channel_weight, spatial_weight, non_local_weight = weights
        mask = ((spatial_attention(teacher, temperature) + spatial_attention(student, temperature)) / 2).detach()
        feature = (mask * (teacher - self.feature_adaptation(student)).pow(2)).sum().sqrt()
        channel = torch.dist(teacher.mean(dim=(2, 3)), self.channel_adaptation(student.mean(dim=(2, 3))))
        spatial = torch.dist(
            teacher.mean(dim=1, keepdim=True), self.spatial_adaptation(student.mean(dim=1, keepdim=True))
        )
        non_local = torch.dist(
            self.teacher_non_local(teacher), self.non_local_adaptation(self.student_non_local(student))
        )
        return (
            feature_weight * feature
            + channel_weight * channel
            + spatial_weight * spatial
            + non_local_weight * non_local
        )


@KD_LOSS_REGISTRY.register()
class FBKD(DistillationLoss):
    """FBKD on chosen FPN levels, summed over levels."""

    needs = ("features",)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        node.REDUCTIONS = [4, 4, 2, 2]  # per level: the non-local block's channel reduction
        node.MAXPOOL_STRIDES = [8, 4, 2, 2]  # per level: g and phi are pooled by 2, then by this
        node.TEMPERATURE = 0.5
        node.FEATURE_WEIGHT = 7e-5  # the attention-masked feature term
        node.CHANNEL_WEIGHT = 4e-3
        node.SPATIAL_WEIGHT = 4e-3
        node.NON_LOCAL_WEIGHT = 7e-5
        return node

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        in_features: Sequence[str],
        temperature: float,
        term_weights: Sequence[float],
        aligns: Mapping[str, nn.Module],
        levels: Mapping[str, FBKDLevel],
    ):
        """
        Args:
            term_weights: the feature, channel, spatial and non-local terms' weights.
            aligns: per level, the student's 1x1 conv to the teacher's width (identity when equal).
            levels: per level, its adaptation layers and non-local blocks.
        """
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.temperature = temperature
        self.term_weights = tuple(term_weights)
        self.aligns = nn.ModuleDict(aligns)
        self.levels = nn.ModuleDict(levels)

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        check_feature_names("FBKD", node.IN_FEATURES, student_shapes, teacher_shapes)
        for key in ("REDUCTIONS", "MAXPOOL_STRIDES"):
            if len(node[key]) != len(node.IN_FEATURES):
                raise ValueError(
                    f"KD.FBKD.{key} = {list(node[key])} needs one entry per level of "
                    f"KD.FBKD.IN_FEATURES = {list(node.IN_FEATURES)}."
                )
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "temperature": node.TEMPERATURE,
            "term_weights": (node.FEATURE_WEIGHT, node.CHANNEL_WEIGHT, node.SPATIAL_WEIGHT, node.NON_LOCAL_WEIGHT),
            "aligns": {
                f: match_channels(student_shapes[f].channels, teacher_shapes[f].channels) for f in node.IN_FEATURES
            },
            "levels": {
                f: FBKDLevel(teacher_shapes[f].channels, reduction, stride)
                for f, reduction, stride in zip(node.IN_FEATURES, node.REDUCTIONS, node.MAXPOOL_STRIDES)
            },
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        with torch.autocast(device_type=student[self.in_features[0]].device.type, enabled=False):
            per_level = [
                self.levels[f].loss(
                    self.aligns[f](student[f].float()), teacher[f].float(), self.temperature, self.term_weights
                )
                for f in self.in_features
            ]
        return self.weighted(self.weight, torch.stack(per_level).sum())
