"""Teacher-bounded box regression of the RPN (Chen et al., NeurIPS 2017).

Rows are the foreground anchors the RPN's own loss samples (recorded "rpn_labels"); targets
are the deltas from those anchors to their matched ground truth, as the RPN computes them.
"""

from typing import Dict

import torch

from detectron2.config import CfgNode, configurable
from detectron2.modeling.box_regression import Box2BoxTransform

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss
from .heads import rpn_regression_targets, rpn_rows
from .rcn_bounded_reg import teacher_bounded_l2

__all__ = ["RPNBoundedReg"]


@KD_LOSS_REGISTRY.register()
class RPNBoundedReg(DistillationLoss):
    """``nu * L_b`` on the foreground anchors, added to detectron2's ``loss_rpn_loc``; summed over
    foreground anchors and divided by the number of sampled anchors (Chen's ``1/N sum``)."""

    needs = ("anchors", "rpn", "rpn_labels")

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 0.5  # nu
        node.MARGIN = 0.0  # m: zero where the student beats the teacher by more
        return node

    @configurable
    def __init__(self, *, weight: float, margin: float, box2box_transform: Box2BoxTransform):
        super().__init__()
        self.weight = weight
        self.margin = margin
        self.box2box_transform = box2box_transform

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {
            "weight": node.WEIGHT,
            "margin": node.MARGIN,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RPN.BBOX_REG_WEIGHTS),
        }

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        sampled_anchors = batch.student["rpn_labels"]
        labels = torch.stack(sampled_anchors.labels)
        foreground = labels == 1
        targets = rpn_regression_targets(
            batch.student["anchors"], sampled_anchors.matched_gt_boxes, self.box2box_transform
        )
        _, student_deltas = rpn_rows(batch.student["rpn"])
        _, teacher_deltas = rpn_rows(batch.teacher["rpn"])
        bounded = teacher_bounded_l2(
            student_deltas[foreground], teacher_deltas[foreground], targets[foreground], self.margin
        )
        num_sampled = (labels >= 0).sum().clamp(min=1)
        return self.weighted(self.weight, bounded.sum() / num_sampled)
