"""Decoupled knowledge distillation, DKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

Hinton's KL splits into a target part (TCKD: the binary split ``[p_gt, 1 - p_gt]``) and a
non-target part (NCKD: the distribution over the other classes, renormalised), which DKD weighs
apart:

    L = T^2 * (alpha * KL(b_T || b_S) + beta * KL(p~_T || p~_S)),  the mean over rows,

both at temperature ``T``. On a Faster R-CNN the rows are the RoI classifier's logits (K + 1
columns, background last) of the student's sampled proposals, as its own ``loss_cls`` reads them,
and a background RoI's target is the background column (mdistiller's ``detection/model/rcnn.py``).
The authors' detection settings: alpha 1, beta 0.25, T 1; the hard ``loss_cls`` keeps weight 1.
"""

from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable
from detectron2.layers import cat

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss

__all__ = ["DKD", "dkd_loss"]


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """``T^2 * (alpha * TCKD + beta * NCKD)``, the mean over the rows of ``(R, C)`` logits whose
    target columns are ``targets`` (R,); 0 (in the graph) for no rows."""
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature
    rows, columns = student.shape
    is_target = F.one_hot(targets, columns).bool()

    def binary_log_probs(logits: torch.Tensor) -> torch.Tensor:
        # log [p_gt, 1 - p_gt], both as differences of logsumexps: finite even where p_gt is 1 in float32
        total = logits.logsumexp(dim=1)
        target = logits[is_target]
        others = logits.masked_fill(is_target, float("-inf")).logsumexp(dim=1)
        return torch.stack([target - total, others - total], dim=1)

    def non_target_log_probs(logits: torch.Tensor) -> torch.Tensor:
        return logits[~is_target].view(rows, columns - 1).log_softmax(dim=1)

    def kl(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
        return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum()

    tckd = kl(binary_log_probs(teacher), binary_log_probs(student))
    nckd = kl(non_target_log_probs(teacher), non_target_log_probs(student))
    return temperature**2 * (alpha * tckd + beta * nckd) / max(rows, 1)


@KD_LOSS_REGISTRY.register()
class DKD(DistillationLoss):
    """DKD on the RoI classifier's logits of the student's sampled proposals; ``loss_kd_dkd`` is
    ``T^2 * (alpha * TCKD + beta * NCKD)`` (the weights are ALPHA and BETA, no separate WEIGHT)."""

    needs = ("proposals", "predictions")

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.ALPHA = 1.0  # TCKD's weight (mdistiller detection/model/config.py)
        node.BETA = 0.25  # NCKD's weight (detection; the classification configs use 8)
        node.TEMPERATURE = 1.0
        return node

    @configurable
    def __init__(self, *, alpha: float, beta: float, temperature: float):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {"alpha": node.ALPHA, "beta": node.BETA, "temperature": node.TEMPERATURE}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        targets = cat([p.gt_classes for p in batch.student["proposals"]])
        student, teacher = batch.student["predictions"].scores, batch.teacher["predictions"].scores
        loss = dkd_loss(student, teacher, targets, self.alpha, self.beta, self.temperature)
        return self.weighted(1.0, loss)
