"""The shape the RoI relation losses (PKT, SP) share: one relation loss between the student's and
the teacher's box-head features of the same sampled proposals, taken within each image."""
from typing import Callable, Dict

import torch

from detectron2.config import configurable

from .build import DistillationBatch, DistillationLoss, weighted
from .heads import mean_over_images

__all__ = ["RoIRelationLoss"]


class RoIRelationLoss(DistillationLoss):
    """A relation loss between student and teacher box-head features of the same RoIs, per image:
    subclasses set ``relation_loss(student, teacher)``; their node is ``KD.<class name upper-cased>``
    with a ``WEIGHT``."""

    needs = ("box_features", "proposals")
    relation_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    @configurable
    def __init__(self, *, weight: float):
        super().__init__()
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes) -> Dict[str, float]:
        return {"weight": cfg.KD[cls.__name__.upper()].WEIGHT}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        loss = mean_over_images(
            self.relation_loss, batch.student["box_features"], batch.teacher["box_features"], batch.student["proposals"]
        )
        return weighted(type(self).__name__.lower(), self.weight, loss)
