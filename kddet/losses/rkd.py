"""Relational knowledge distillation, RKD (Park et al., CVPR 2019), distance and angle, on the
box-head features of the student's sampled proposals."""

from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable

from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss
from .heads import mean_over_images

__all__ = ["RKD", "rkd_angle_loss", "rkd_distance_loss"]


def _off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def _normalised_distances(features: torch.Tensor) -> torch.Tensor:
    """``||f_i - f_j|| / mu`` for ``i != j``, ``mu`` their mean, from the Gram matrix (no (R, R, D)
    tensor); centring first is free (distances do not move) and limits cancellation."""
    f = features.float() - features.float().mean(dim=0)
    squared_norms = f.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * f @ f.t()
    distances = squared.clamp(min=1e-12).sqrt()[_off_diagonal(len(f), f.device)]
    return distances / distances.mean().clamp(min=1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber loss (smooth-L1, delta 1) between teacher and student ``psi_D(f_i, f_j) =
    ||f_i - f_j|| / mu``, the mean over ordered pairs ``i != j`` (Park et al. 2019, sec. 3.2.1)."""
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def _angles(features: torch.Tensor) -> torch.Tensor:
    """``[j, i, k] = cos(f_i - f_j, f_k - f_j)`` for ``i != j != k``, flattened."""
    f = features.float()
    unit = F.normalize(f[None, :, :] - f[:, None, :], dim=2)  # [j, i] = (f_i - f_j) / |f_i - f_j|
    cosines = unit @ unit.transpose(1, 2)
    off = _off_diagonal(len(f), f.device)
    return cosines[off[:, :, None] & off[:, None, :]]


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber loss between teacher and student ``psi_A(f_i, f_j, f_k) = cos angle(f_i - f_j,
    f_k - f_j)``, the mean over triplets with ``i, k != j`` (Park et al. 2019, sec. 3.2.2)."""
    return F.smooth_l1_loss(_angles(student), _angles(teacher))


@KD_LOSS_REGISTRY.register()
class RKD(DistillationLoss):
    """RKD-D and RKD-A between student and teacher box-head features of the same RoIs, per image.

    The angle term holds ``(R, R, D)`` and ``(R, R, R)`` tensors, so it runs on a random subset of
    at most ``angle_max_rois`` RoIs of each image (the same RoIs for student and teacher).
    """

    needs = ("box_features", "proposals")

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.DISTANCE_WEIGHT = 1.0  # the official code's dist_ratio / angle_ratio
        node.ANGLE_WEIGHT = 2.0
        node.ANGLE_MAX_ROIS = 128  # the angle term is cubic in the RoIs of an image
        return node

    @configurable
    def __init__(self, *, distance_weight: float, angle_weight: float, angle_max_rois: int):
        super().__init__()
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.angle_max_rois = angle_max_rois

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cls.config_node(cfg)
        return {
            "distance_weight": node.DISTANCE_WEIGHT,
            "angle_weight": node.ANGLE_WEIGHT,
            "angle_max_rois": node.ANGLE_MAX_ROIS,
        }

    def _subsampled_angle_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        keep = torch.randperm(len(student), device=student.device)[: self.angle_max_rois]
        return rkd_angle_loss(student[keep], teacher[keep])

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        rows = (batch.student["box_features"], batch.teacher["box_features"], batch.student["proposals"])
        return {
            **self.weighted(self.distance_weight, mean_over_images(rkd_distance_loss, *rows), "distance"),
            **self.weighted(self.angle_weight, mean_over_images(self._subsampled_angle_loss, *rows), "angle"),
        }
