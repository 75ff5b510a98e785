"""PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022).

Standardising each channel first removes the difference in magnitude between the two FPNs, so
the MSE compares only the pattern (it equals 2 * (1 - Pearson correlation)). A student narrower
than its teacher passes through a 1x1 adapter to the teacher's width.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import match_channels
from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss

__all__ = ["PKD", "pkd_loss", "standardise_channels"]


def standardise_channels(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each channel of (N, C, H, W) maps to zero mean and unit (population) standard deviation over
    the batch and positions, as PKD's code does; a constant channel becomes 0."""
    features = features.float()
    mean = features.mean(dim=(0, 2, 3), keepdim=True)
    std = features.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (features - mean) / (std + eps)


def pkd_loss(student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean((norm(F_S) - norm(F_T))^2)`` with ``norm`` the per-channel standardisation (Cao et al. 2022)."""
    return F.mse_loss(standardise_channels(student_adapted), standardise_channels(teacher))


@KD_LOSS_REGISTRY.register()
class PKD(PerLevelFeatureLoss):
    """PKD on chosen FPN levels, the mean over levels."""

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return match_channels(student_channels, teacher_channels)

    def level_loss(self, level: str, student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return pkd_loss(student_adapted, teacher)
