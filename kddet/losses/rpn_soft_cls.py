"""Soft objectness of the RPN by its teacher (Chen et al., NeurIPS 2017).

Chen et al. apply the soft loss to the anchors the hard loss is computed on; these are the
anchors detectron2's RPN samples (``label_and_sample_anchors``, recorded as "rpn_labels"), so
the two terms of ``mu * L_hard + (1 - mu) * L_soft`` see the same rows. The soft term is their
mean; detectron2 divides the hard term by the requested sample size (``RPN.BATCH_SIZE_PER_IMAGE``
per image), the same number whenever an image has anchors enough to fill its sample.
"""
from typing import Dict

import torch
from torch import nn

from detectron2.config import configurable

from .build import KD_LOSS_REGISTRY, DistillationBatch, weighted
from .heads import class_weights, rpn_rows
from .rcn_soft_cls import weighted_soft_cross_entropy

__all__ = ["RPNSoftCls", "objectness_as_two_classes"]


def objectness_as_two_classes(logits: torch.Tensor) -> torch.Tensor:
    """``(R,)`` sigmoid logits ``z`` as ``(R, 2)`` softmax logits ``(z, 0)``: softmax at
    temperature ``tau`` then gives ``P = (sigmoid(z/tau), 1 - sigmoid(z/tau))``, object first,
    background last (Chen et al. 2017, RPN as a binary classifier)."""
    return torch.stack([logits, torch.zeros_like(logits)], dim=1)


@KD_LOSS_REGISTRY.register()
class RPNSoftCls(nn.Module):
    """``L_cls = mu * L_hard + (1 - mu) * L_soft`` on the sampled anchors: the hard part is
    detectron2's ``loss_rpn_cls`` scaled by ``mu``, the soft part is this loss's term."""

    needs = ("rpn", "rpn_labels")

    @configurable
    def __init__(self, *, mu: float, temperature: float, background_weight: float):
        super().__init__()
        self.mu = mu
        self.temperature = temperature
        self.background_weight = background_weight
        self.student_loss_scale = {"loss_rpn_cls": mu}

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cfg.KD.RPNSOFTCLS
        return {"mu": node.MU, "temperature": node.TEMPERATURE, "background_weight": node.BACKGROUND_WEIGHT}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student_logits, _ = rpn_rows(batch.student["rpn"])
        teacher_logits, _ = rpn_rows(batch.teacher["rpn"])
        sampled = torch.stack(batch.student["rpn_labels"][0]) >= 0
        weights = class_weights(2, self.background_weight, student_logits.device)
        soft = weighted_soft_cross_entropy(
            objectness_as_two_classes(student_logits[sampled]),
            objectness_as_two_classes(teacher_logits[sampled]),
            weights,
            self.temperature,
        )
        return weighted("rpn_soft_cls", 1.0 - self.mu, soft)
