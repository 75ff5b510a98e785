"""Teacher-bounded box regression of the RoI head (Chen et al., NeurIPS 2017)."""

from typing import Dict

import torch

from detectron2.config import CfgNode, configurable
from detectron2.modeling.box_regression import Box2BoxTransform

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss
from .heads import gt_class_deltas, rcn_foreground

__all__ = ["RCNBoundedReg", "teacher_bounded_l2"]


def teacher_bounded_l2(
    student_deltas: torch.Tensor, teacher_deltas: torch.Tensor, targets: torch.Tensor, margin: float
) -> torch.Tensor:
    """Per row ``L_b = ||R_S - y||^2`` if ``||R_S - y||^2 + m > ||R_T - y||^2``, else 0 (Chen et al.
    2017, sec. 3.3): the student is pushed towards the target only while it is not better than the
    teacher by more than the margin. Inputs ``(R, 4)``; returns ``(R,)``."""
    student_error = (student_deltas.float() - targets.float()).pow(2).sum(dim=1)
    teacher_error = (teacher_deltas.float() - targets.float()).pow(2).sum(dim=1)
    return torch.where(student_error.detach() + margin > teacher_error, student_error, torch.zeros_like(student_error))


@KD_LOSS_REGISTRY.register()
class RCNBoundedReg(DistillationLoss):
    """``nu * L_b`` on the foreground proposals, added to detectron2's smooth-L1 ``loss_box_reg``
    and, like it, summed over foreground rows and divided by the number of sampled rows."""

    needs = ("predictions", "proposals")

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 0.5  # nu
        node.MARGIN = 0.0  # m: zero where the student beats the teacher by more
        return node

    @configurable
    def __init__(self, *, weight: float, margin: float, box2box_transform: Box2BoxTransform, num_classes: int):
        super().__init__()
        self.weight = weight
        self.margin = margin
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {
            "weight": node.WEIGHT,
            "margin": node.MARGIN,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        proposals = batch.student["proposals"]
        fg, fg_classes, targets = rcn_foreground(proposals, self.box2box_transform, self.num_classes)
        bounded = teacher_bounded_l2(
            gt_class_deltas(batch.student["predictions"].proposal_deltas, fg, fg_classes),
            gt_class_deltas(batch.teacher["predictions"].proposal_deltas, fg, fg_classes),
            targets,
            self.margin,
        )
        num_sampled = max(sum(len(p) for p in proposals), 1)
        return self.weighted(self.weight, bounded.sum() / num_sampled)
