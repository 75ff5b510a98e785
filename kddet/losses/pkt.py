"""Probabilistic knowledge transfer, PKT (Passalis & Tefas, ECCV 2018), on the box-head features
of the student's sampled proposals."""

import torch
import torch.nn.functional as F

from .build import KD_LOSS_REGISTRY
from .roi_relation import RoIRelationLoss

__all__ = ["PKT", "pkt_conditionals", "pkt_loss"]

EPS = 1e-7  # keeps log() finite where a kernel value is 0 (opposite features)


def pkt_conditionals(features: torch.Tensor) -> torch.Tensor:
    """``p_{i|j} = K(f_i, f_j) / sum_{k != j} K(f_k, f_j)`` with the cosine kernel
    ``K(a, b) = (cos(a, b) + 1) / 2`` (Passalis & Tefas 2018, sec. 3); ``(R, D)`` features give
    ``(R, R)``, column ``j`` the distribution over ``i != j`` (0 on the diagonal)."""
    unit = F.normalize(features.float(), dim=1)
    # The KL compares near-equal distributions: autocast's fp16/bf16 cosines would swamp it (2% in bf16).
    with torch.autocast(device_type=unit.device.type, enabled=False):
        kernel = (unit @ unit.t() + 1.0) / 2.0
    kernel = kernel * (1.0 - torch.eye(len(kernel), device=kernel.device))
    return kernel / kernel.sum(dim=0, keepdim=True).clamp(min=EPS)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(P_T || P_S)`` of the conditional distributions, the mean over the conditioning sample
    ``j`` (the paper sums; the mean keeps the scale independent of the number of RoIs)."""
    p_t, p_s = pkt_conditionals(teacher), pkt_conditionals(student)
    kl = p_t * (p_t.clamp(min=EPS).log() - p_s.clamp(min=EPS).log())
    return kl.sum() / len(p_t)


@KD_LOSS_REGISTRY.register()
class PKT(RoIRelationLoss):
    """PKT between student and teacher box-head features of the same RoIs, per image."""

    relation_loss = staticmethod(pkt_loss)
