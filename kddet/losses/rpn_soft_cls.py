"""Soft objectness of the RPN by its teacher (Chen et al., NeurIPS 2017).

Chen et al. apply the soft loss to the anchors the hard loss is computed on; these are the
anchors detectron2's RPN samples (``label_and_sample_anchors``, recorded as "rpn_labels"), so
the two terms of ``mu * L_hard + (1 - mu) * L_soft`` see the same rows. The soft term is their
mean; detectron2 divides the hard term by the requested sample size (``RPN.BATCH_SIZE_PER_IMAGE``
per image), the same number whenever an image has anchors enough to fill its sample.
"""

from typing import Dict

import torch

from .build import KD_LOSS_REGISTRY, DistillationBatch
from .heads import rpn_rows
from .soft_cls import SoftClassification

__all__ = ["RPNSoftCls", "objectness_as_two_classes"]


def objectness_as_two_classes(logits: torch.Tensor) -> torch.Tensor:
    """``(R,)`` sigmoid logits ``z`` as ``(R, 2)`` softmax logits ``(z, 0)``: softmax at
    temperature ``tau`` then gives ``P = (sigmoid(z/tau), 1 - sigmoid(z/tau))``, object first,
    background last (Chen et al. 2017, RPN as a binary classifier)."""
    return torch.stack([logits, torch.zeros_like(logits)], dim=1)


@KD_LOSS_REGISTRY.register()
class RPNSoftCls(SoftClassification):
    """Soft objectness on the sampled anchors; the hard part is ``loss_rpn_cls``."""

    needs = ("rpn", "rpn_labels")
    hard_loss = "loss_rpn_cls"

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student_logits, _ = rpn_rows(batch.student["rpn"])
        teacher_logits, _ = rpn_rows(batch.teacher["rpn"])
        sampled = torch.stack(batch.student["rpn_labels"].labels) >= 0
        return self.soft_term(
            objectness_as_two_classes(student_logits[sampled]), objectness_as_two_classes(teacher_logits[sampled])
        )
