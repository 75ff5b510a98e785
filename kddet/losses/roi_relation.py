"""The shape the RoI relation losses (PKT, SP) share: one relation loss between the student's and
the teacher's box-head features of the same sampled proposals, taken within each image."""

from typing import Callable, Dict

import torch

from detectron2.config import CfgNode, configurable

from .build import DistillationBatch, DistillationLoss
from .heads import mean_over_images

__all__ = ["RoIRelationLoss"]


class RoIRelationLoss(DistillationLoss):
    """A relation loss between student and teacher box-head features of the same RoIs, per image:
    subclasses set ``relation_loss(student, teacher)``; their node has a ``WEIGHT``."""

    needs = ("box_features", "proposals")
    relation_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        return node

    @configurable
    def __init__(self, *, weight: float):
        super().__init__()
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes) -> Dict[str, float]:
        return {"weight": cls.config_node(cfg).WEIGHT}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        loss = mean_over_images(
            self.relation_loss, batch.student["box_features"], batch.teacher["box_features"], batch.student["proposals"]
        )
        return self.weighted(self.weight, loss)
