"""Neuron Selectivity Transfer, NST (Huang & Wang, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer", 2017).

Each channel's activation map is one sample of where the network responds; NST matches the
distribution of the student's samples to the teacher's by their MMD. The channel counts need
not agree, so no adapter is trained.
"""

from typing import Mapping

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss

__all__ = ["NST", "KERNELS", "nst_loss"]

KERNELS = ("linear", "polynomial", "gaussian")


def _kernel_matrix(samples: torch.Tensor, kernel: str, degree: int, constant: float) -> torch.Tensor:
    """``k(x_i, x_j)`` between all rows of ``samples`` (N, n, D), as (N, n, n)."""
    dot = samples @ samples.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "polynomial":
        return (dot + constant) ** degree
    squared_norms = dot.diagonal(dim1=1, dim2=2)
    squared_distances = (squared_norms[:, :, None] + squared_norms[:, None, :] - 2 * dot).clamp(min=0)
    n = samples.shape[1]
    # The bandwidth is a statistic of the samples, not something to optimise: no gradient.
    sigma2 = (squared_distances.sum(dim=(1, 2)) / (n * (n - 1))).detach().clamp(min=1e-12)
    return torch.exp(-squared_distances / (2 * sigma2[:, None, None]))


def nst_loss(
    student: torch.Tensor, teacher: torch.Tensor, kernel: str = "polynomial", degree: int = 2, constant: float = 0.0
) -> torch.Tensor:
    """``1/2 * MMD^2`` between the channels of two (N, C, H, W) maps, per image, averaged (Huang & Wang,
    the NST loss without its lambda):
    ``MMD^2 = 1/C_T^2 sum k(t_i,t_i') + 1/C_S^2 sum k(s_j,s_j') - 2/(C_T C_S) sum k(t_i,s_j)``,
    samples ``f^k / ||f^k||``, one per channel.

    Kernels: ``linear`` ``x.y``; ``polynomial`` ``(x.y + constant)^degree``; ``gaussian``
    ``exp(-||x-y||^2 / (2 sigma^2))``, ``sigma^2`` the mean squared distance between distinct samples
    of both maps. A student map of another spatial size is bilinearly resized to the teacher's.
    """
    if kernel not in KERNELS:
        raise ValueError(f"Unknown NST kernel '{kernel}'; choose one of {KERNELS}")
    student, teacher = student.float(), teacher.float()
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    teacher_samples = F.normalize(teacher.flatten(2), dim=2)
    student_samples = F.normalize(student.flatten(2), dim=2)
    # MMD^2 is a difference of near-equal means: autocast's fp16/bf16 matmul would swamp it.
    with torch.autocast(device_type=teacher.device.type, enabled=False):
        k = _kernel_matrix(torch.cat([teacher_samples, student_samples], dim=1), kernel, degree, constant)
    c_t = teacher_samples.shape[1]
    mmd2 = k[:, :c_t, :c_t].mean(dim=(1, 2)) + k[:, c_t:, c_t:].mean(dim=(1, 2)) - 2 * k[:, :c_t, c_t:].mean(dim=(1, 2))
    return 0.5 * mmd2.mean()


@KD_LOSS_REGISTRY.register()
class NST(PerLevelFeatureLoss):
    """MMD between the channel distributions of student and teacher, the mean over levels."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.KERNEL = "polynomial"  # or "linear", "gaussian"
        node.POLY_DEGREE = 2
        node.POLY_CONSTANT = 0.0
        return node

    @configurable
    def __init__(self, *, kernel: str, degree: int, constant: float, **kwargs):
        super().__init__(**kwargs)
        if kernel not in KERNELS:
            raise ValueError(f"Unknown KD.NST.KERNEL '{kernel}'; choose one of {KERNELS}")
        self.kernel = kernel
        self.degree = degree
        self.constant = constant

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        return dict(
            super().from_config(cfg, student_shapes, teacher_shapes),
            kernel=node.KERNEL,
            degree=node.POLY_DEGREE,
            constant=node.POLY_CONSTANT,
        )

    def level_loss(self, level: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return nst_loss(student, teacher, self.kernel, self.degree, self.constant)
