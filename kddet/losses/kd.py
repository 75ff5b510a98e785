"""Knowledge distillation on the RoI head's class scores (Hinton et al., 2015)."""

from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss

__all__ = ["KD", "soft_target_kl"]


def soft_target_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``tau^2 * KL(P_T || softmax(z_S / tau))``, the mean over rows (Hinton et al. 2015, sec. 2:
    softmax at temperature T, eq. 1, and the ``T^2`` that keeps gradients' scale). It is the soft
    cross-entropy minus the teacher's entropy, a constant: same gradients, zero at a match.
    ``(N, C)`` inputs."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_probs.float(), reduction="sum")
    return temperature**2 * kl / max(student_logits.shape[0], 1)


@KD_LOSS_REGISTRY.register()
class KD(DistillationLoss):
    """Soft targets from the teacher's box predictor on the student's sampled proposals; the
    student's hard ``loss_cls`` stays as it is."""

    needs = ("predictions",)

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 1.0
        node.TEMPERATURE = 4.0
        return node

    @configurable
    def __init__(self, *, weight: float, temperature: float):
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {"weight": node.WEIGHT, "temperature": node.TEMPERATURE}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student_scores, teacher_scores = batch.student["predictions"].scores, batch.teacher["predictions"].scores
        teacher_probs = F.softmax(teacher_scores.float() / self.temperature, dim=1)
        return self.weighted(self.weight, soft_target_kl(student_scores, teacher_probs, self.temperature))
