"""FitNets hints (Romero et al., ICLR 2015), as used on detectors by Chen et al. 2017."""

from typing import Mapping

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

from ..adapters import TermSchedule, build_adapter
from .build import KD_LOSS_REGISTRY
from .per_level import PerLevelFeatureLoss
from .pkd import standardise_channels

__all__ = ["FitNet", "fitnet_hint_loss"]


def fitnet_hint_loss(student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``L = 1/2 * mean((F_T - r(F_S))^2)`` over all elements (Romero et al., eq. 3)."""
    return 0.5 * (teacher.float() - student_adapted.float()).pow(2).mean()


@KD_LOSS_REGISTRY.register()
class FitNet(PerLevelFeatureLoss):
    """Hint loss on chosen FPN levels through a per-level 1x1 or 3x3 adapter (``ADAPTER``);
    ``STANDARDIZE_TARGET`` regresses the teacher's map with each channel standardised (as PKD does),
    so that the target's scale is the same whatever the teacher's FPN outputs; ``STANDARDIZE_STUDENT``
    standardises the adapted student map too, so that the hint asks for the teacher's pattern and
    not its scale (PKD's comparison through FitNets' adapter); ``WARMUP_ITERS`` and
    ``FIT_ADAPTERS_IN_WARMUP`` fit the adapters before the student is pulled, as FitNets' first stage
    trains the hint on its own, and ``DECAY_TO_ZERO`` lets the hint fall linearly to 0 at the
    schedule's end (``kddet.adapters.TermSchedule``)."""

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.ADAPTER = "conv1x1"  # or "conv3x3"
        node.STANDARDIZE_TARGET = False  # True: regress each teacher channel standardised (PKD's norm)
        node.STANDARDIZE_STUDENT = False  # True: the adapted student map standardised too
        node.WARMUP_ITERS = 0  # the term is zeroed before this iteration
        node.FIT_ADAPTERS_IN_WARMUP = False  # True: during warm-up the adapters learn, the student is not pulled
        node.DECAY_TO_ZERO = False  # True: after the warm-up the weight falls linearly to 0 at SOLVER.MAX_ITER
        return node

    @configurable
    def __init__(
        self,
        *,
        standardize_target: bool,
        standardize_student: bool = False,
        schedule: TermSchedule = TermSchedule(),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.standardize_target = standardize_target
        self.standardize_student = standardize_student
        self.schedule = schedule

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        return dict(
            super().from_config(cfg, student_shapes, teacher_shapes),
            standardize_target=node.STANDARDIZE_TARGET,
            standardize_student=node.STANDARDIZE_STUDENT,
            schedule=TermSchedule.from_node(node, cfg.SOLVER.MAX_ITER),
        )

    @staticmethod
    def build_adapter(node, student_channels: int, teacher_channels: int) -> nn.Module:
        return build_adapter(node.ADAPTER, student_channels, teacher_channels)

    def level_loss(self, level: str, student_adapted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.standardize_target:
            teacher = standardise_channels(teacher)
        if self.standardize_student:
            student_adapted = standardise_channels(student_adapted)
        return fitnet_hint_loss(student_adapted, teacher)
