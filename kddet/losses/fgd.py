"""Focal and global distillation, FGD (Yang et al., "Focal and Global Knowledge Distillation for
Detectors", CVPR 2022).

Focal part: foreground and background are imitated apart, each location and channel weighted by
the teacher's spatial and channel attention,

    A^S = H W softmax(mean_c |F| / T),   A^C = C softmax(mean_hw |F| / T),
    L_fea = alpha/N sum M^fg A^S_T A^C_T (S - T)^2 + beta/N sum M^bg A^S_T A^C_T (S - T)^2,
    L_at  = gamma/N (sum |A^C_S - A^C_T| + sum |A^S_S - A^S_T|),

with ``M^fg = 1 / (h_r w_r)`` inside a ground-truth box of h_r x w_r cells (the smallest box's
where boxes overlap) and ``M^bg`` the other cells, normalised to sum to 1 per image. Global part:
each network's map through its own GcBlock (context pooled by a softmax over positions, then a
1x1 conv, LayerNorm, ReLU, 1x1 conv, added back), ``L_global = lambda/N sum (G_S(S) - G_T(T))^2``.
The student first goes through a 1x1 conv when the widths differ. Levels are summed, as the
authors' one loss per FPN level is. The GcBlocks and the 1x1 conv are trained adapters, dropped by
the student export.

The boxes are laid on each level by its stride, ``x / stride``: where an image is padded within
the batch, this is where the box lies on the map. The authors' code scales by ``map size / image
size`` (the unpadded one), which stretches the boxes of a padded image towards the padding; the
two agree on an image that fills the batch. The authors' Faster R-CNN settings (yzd-v/FGD,
``configs/distillers/fgd/fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco.py``):
T 0.5, alpha 5e-5, beta 2.5e-5, gamma 5e-5, lambda 5e-7, on p2-p5.
"""

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes

from ..adapters import TermSchedule, match_channels
from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, check_feature_names
from .pkd import standardise_channels

__all__ = ["FGD", "GlobalContextBlock", "attention", "focal_masks"]


def attention(features: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The spatial (N, H, W) and channel (N, C) attention of (N, C, H, W) maps, scaled to mean 1."""
    n, c, h, w = features.shape
    magnitude = features.abs()
    spatial = h * w * F.softmax((magnitude.mean(dim=1) / temperature).view(n, -1), dim=1)
    channel = c * F.softmax(magnitude.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.view(n, h, w), channel


def focal_masks(gt_boxes: Boxes, stride: int, grid_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One image's (H, W) foreground mask ``1 / (h_r w_r)`` and normalised background mask on a level.

    A box covers the cells from floor(x0 / stride) to ceil(x1 / stride) inclusive (and likewise in
    y), as the authors' code rounds; where boxes overlap, the larger value (the smaller box) wins."""
    boxes = gt_boxes.tensor.float() / stride
    foreground = boxes.new_zeros(grid_size)
    x0, y0 = boxes[:, 0].floor().long().clamp(min=0), boxes[:, 1].floor().long().clamp(min=0)
    x1, y1 = boxes[:, 2].ceil().long(), boxes[:, 3].ceil().long()
    areas = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0)).float()
    for box in range(len(boxes)):
        cells = foreground[y0[box] : y1[box] + 1, x0[box] : x1[box] + 1]
        cells.copy_(cells.clamp(min=areas[box]))
    background = (foreground == 0).float()
    return foreground, background / background.sum().clamp(min=1)


class GlobalContextBlock(nn.Module):
    """The GcBlock of FGD's global term: ``x + transform(sum_hw softmax(conv(x)) x)``, its last
    conv zero-initialised so that it starts as the identity (the authors' initialisation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.context_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_mask.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weights = F.softmax(self.context_mask(x).view(n, 1, h * w), dim=2)  # (N, 1, HW)
        context = torch.bmm(x.view(n, c, h * w), weights.transpose(1, 2)).view(n, c, 1, 1)
        return x + self.transform(context)


@KD_LOSS_REGISTRY.register()
class FGD(DistillationLoss):
    """FGD on chosen FPN levels, summed over levels; ALPHA, BETA, GAMMA and LAMBDA weigh its four
    terms as the authors' do, and WEIGHT multiplies their sum."""

    needs = ("features",)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        node.TEMPERATURE = 0.5
        node.ALPHA = 5e-5  # foreground imitation
        node.BETA = 2.5e-5  # background imitation
        node.GAMMA = 5e-5  # attention imitation
        node.LAMBDA = 5e-7  # global (GcBlock) term
        node.STANDARDIZE = False  # True: both maps standardised per channel before every term (PKD's norm)
        node.WARMUP_ITERS = 0  # the term is zeroed before this iteration
        node.FIT_ADAPTERS_IN_WARMUP = False  # True: in warm-up the aligns and GcBlocks learn, the student is not pulled
        return node

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        in_features: Sequence[str],
        strides: Mapping[str, int],
        temperature: float,
        alpha: float,
        beta: float,
        gamma: float,
        lambda_: float,
        aligns: Mapping[str, nn.Module],
        student_context: Mapping[str, nn.Module],
        teacher_context: Mapping[str, nn.Module],
        standardize: bool = False,
        schedule: TermSchedule = TermSchedule(),
    ):
        """
        Args:
            strides: per level, the stride that lays the boxes on it.
            aligns: per level, the student's 1x1 conv to the teacher's width (identity when equal).
            student_context, teacher_context: per level, the GcBlock each network's map goes through.
            standardize: compare the two maps with each channel standardised over the batch (as
                PKD does), so that the student is asked for the teacher's pattern and not its scale,
                which a student whose heads did not start from the teacher's need not take on.
            schedule: the term's warm-up; fitting the aligns in it keeps a student narrower than its
                teacher from being pulled through their random start.
        """
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.strides = dict(strides)
        self.temperature = temperature
        self.alpha, self.beta, self.gamma, self.lambda_ = alpha, beta, gamma, lambda_
        self.aligns = nn.ModuleDict(aligns)
        self.student_context = nn.ModuleDict(student_context)
        self.teacher_context = nn.ModuleDict(teacher_context)
        self.standardize = standardize
        self.schedule = schedule

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        check_feature_names("FGD", node.IN_FEATURES, student_shapes, teacher_shapes)
        narrow = [f for f in node.IN_FEATURES if teacher_shapes[f].channels < 2]
        if narrow:
            raise ValueError(f"KD.FGD: the GcBlock halves the teacher's width, which is below 2 on {narrow}.")
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "strides": {f: student_shapes[f].stride for f in node.IN_FEATURES},
            "temperature": node.TEMPERATURE,
            "alpha": node.ALPHA,
            "beta": node.BETA,
            "gamma": node.GAMMA,
            "lambda_": node.LAMBDA,
            "aligns": {
                f: match_channels(student_shapes[f].channels, teacher_shapes[f].channels) for f in node.IN_FEATURES
            },
            "student_context": {f: GlobalContextBlock(teacher_shapes[f].channels) for f in node.IN_FEATURES},
            "teacher_context": {f: GlobalContextBlock(teacher_shapes[f].channels) for f in node.IN_FEATURES},
            "standardize": node.STANDARDIZE,
            "schedule": TermSchedule.from_node(node, cfg.SOLVER.MAX_ITER),
        }

    def masks(self, batch: DistillationBatch, level: str, grid_size: Tuple[int, int]) -> List[torch.Tensor]:
        """The (N, H, W) foreground and background masks of the batch on ``level``."""
        per_image = [focal_masks(x.gt_boxes, self.strides[level], grid_size) for x in batch.gt_instances]
        return [torch.stack(masks) for masks in zip(*per_image)]

    def level_loss(
        self, level: str, student: torch.Tensor, teacher: torch.Tensor, batch: DistillationBatch
    ) -> torch.Tensor:
        n = teacher.shape[0]
        if self.standardize:
            student, teacher = standardise_channels(student), standardise_channels(teacher)
        spatial_t, channel_t = attention(teacher, self.temperature)
        spatial_s, channel_s = attention(student, self.temperature)
        foreground, background = (m.to(teacher.device) for m in self.masks(batch, level, tuple(teacher.shape[-2:])))
        squared = (spatial_t[:, None] * channel_t[:, :, None, None]) * (student - teacher).pow(2)
        fg_loss = (foreground[:, None] * squared).sum() / n
        bg_loss = (background[:, None] * squared).sum() / n
        attention_loss = ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / n
        global_loss = (self.student_context[level](student) - self.teacher_context[level](teacher)).pow(2).sum() / n
        return self.alpha * fg_loss + self.beta * bg_loss + self.gamma * attention_loss + self.lambda_ * global_loss

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        with torch.autocast(device_type=student[self.in_features[0]].device.type, enabled=False):
            per_level = [
                self.level_loss(
                    f,
                    self.aligns[f](self.schedule.student_input(student[f], batch.iteration).float()),
                    teacher[f].float(),
                    batch,
                )
                for f in self.in_features
            ]
        return self.weighted(self.schedule.weight(self.weight, batch.iteration), torch.stack(per_level).sum())
