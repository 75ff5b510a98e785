"""The teacher-free virtual teacher (Yuan et al., CVPR 2020, "Revisit KD: a teacher-free
framework", Tf-KD_reg): soft targets from the labels alone, no teacher network."""

from typing import Dict

import torch

from detectron2.config import CfgNode, configurable
from detectron2.layers import cat

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss
from .kd import soft_target_kl

__all__ = ["VirtualTeacher", "virtual_teacher_probs"]


def virtual_teacher_probs(labels: torch.Tensor, num_columns: int, correct_prob: float) -> torch.Tensor:
    """``p(k) = a`` for the true class, ``(1 - a) / (C - 1)`` for each of the other ``C - 1``
    columns (Yuan et al. 2020, sec. 4, the manually designed teacher of Tf-KD_reg).
    ``(R,)`` labels give ``(R, C)`` probabilities."""
    probs = torch.full((labels.numel(), num_columns), (1.0 - correct_prob) / (num_columns - 1), device=labels.device)
    probs[torch.arange(labels.numel(), device=labels.device), labels] = correct_prob
    return probs


@KD_LOSS_REGISTRY.register()
class VirtualTeacher(DistillationLoss):
    """``tau^2 * KL(p || softmax(z_S / tau))`` on the sampled proposals, ``p`` the virtual teacher
    over the K+1 columns of the RoI head (background is the true class of background RoIs)."""

    needs = ("predictions", "proposals")
    needs_teacher = False

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.TEMPERATURE = 1.0
        node.CORRECT_PROB = 0.9
        return node

    @configurable
    def __init__(self, *, weight: float, temperature: float, correct_prob: float):
        super().__init__()
        self.weight = weight
        self.temperature = temperature
        self.correct_prob = correct_prob

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {"weight": node.WEIGHT, "temperature": node.TEMPERATURE, "correct_prob": node.CORRECT_PROB}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        scores = batch.student["predictions"].scores
        labels = cat([p.gt_classes for p in batch.student["proposals"]])
        probs = virtual_teacher_probs(labels, scores.shape[1], self.correct_prob)
        return self.weighted(self.weight, soft_target_kl(scores, probs, self.temperature))
