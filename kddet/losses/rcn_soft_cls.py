"""Soft classification of the RoI head by its teacher (Chen et al., NeurIPS 2017)."""

from typing import Dict

import torch

from .build import KD_LOSS_REGISTRY, DistillationBatch
from .soft_cls import SoftClassification

__all__ = ["RCNSoftCls"]


@KD_LOSS_REGISTRY.register()
class RCNSoftCls(SoftClassification):
    """Soft classification on the student's sampled proposals; the hard part is ``loss_cls``."""

    needs = ("predictions",)
    hard_loss = "loss_cls"

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        return self.soft_term(batch.student["predictions"].scores, batch.teacher["predictions"].scores)
