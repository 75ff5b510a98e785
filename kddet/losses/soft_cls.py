"""What the soft classification losses of Chen et al. (NeurIPS 2017) share, for the RPN's
objectness (``rpn_soft_cls.py``) and the RoI head's classes (``rcn_soft_cls.py``)."""

from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable

from .build import DistillationLoss
from .heads import class_weights

__all__ = ["SoftClassification", "weighted_soft_cross_entropy"]


def weighted_soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``L_soft = -sum_c w_c P_T(c) log P_S(c)``, both softmaxes at ``temperature``, the mean over
    rows (Chen et al. 2017, sec. 3.2, with the ``1/N sum_i`` of their total loss).
    Logits are ``(N, C)``, ``weights`` ``(C,)``."""
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    per_row = -(weights * teacher_probs * student_log_probs).sum(dim=1)
    return per_row.sum() / max(per_row.numel(), 1)


class SoftClassification(DistillationLoss):
    """``L_cls = mu * L_hard + (1 - mu) * L_soft`` (Chen et al. 2017): detectron2's ``hard_loss``
    scaled by ``mu``, and the soft term ``loss_kd_<name>`` weighted by ``1 - mu``. Subclasses
    pick the rows; their node ``KD.<class name upper-cased>`` has MU, TEMPERATURE, BACKGROUND_WEIGHT."""

    hard_loss: str

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.MU = 0.5
        node.TEMPERATURE = 1.0
        node.BACKGROUND_WEIGHT = 1.5  # w_bg; object classes weigh 1
        return node

    @configurable
    def __init__(self, *, mu: float, temperature: float, background_weight: float):
        super().__init__()
        self.mu = mu
        self.temperature = temperature
        self.background_weight = background_weight

    @property
    def student_loss_scale(self) -> Dict[str, float]:
        return {self.hard_loss: self.mu}

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {"mu": node.MU, "temperature": node.TEMPERATURE, "background_weight": node.BACKGROUND_WEIGHT}

    def soft_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        weights = class_weights(student_logits.shape[1], self.background_weight, student_logits.device)
        soft = weighted_soft_cross_entropy(student_logits, teacher_logits, weights, self.temperature)
        return self.weighted(1.0 - self.mu, soft)
