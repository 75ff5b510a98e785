"""The registry of distillation losses and what every loss receives.

A loss is a small ``nn.Module`` registered in ``KD_LOSS_REGISTRY`` under its class name, built
from ``cfg.KD.<NAME>`` (the name upper-cased) through ``@configurable`` ``from_config(cls, cfg,
student_shapes, teacher_shapes)``. It declares in ``needs`` which records (see
``kddet.capture.STUDENT_SOURCES``) it reads, so that the teacher runs only as far as the enabled
losses need, and returns a dict of weighted terms named ``loss_kd_*``.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

__all__ = [
    "KD_LOSS_REGISTRY",
    "DistillationBatch",
    "build_kd_losses",
    "check_feature_names",
    "kd_loss_classes",
    "loss_needs_teacher",
    "losses_need_teacher",
    "weighted",
]

KD_LOSS_REGISTRY = Registry("KD_LOSS")
KD_LOSS_REGISTRY.__doc__ = """Distillation losses, selected by name in ``cfg.KD.LOSSES``."""


@dataclass
class DistillationBatch:
    """What student and teacher produced on one training batch.

    ``student`` and ``teacher`` map record kinds ("features", "rpn", "anchors", "proposals",
    "box_features", "predictions"; the student also "rpn_labels") to values; the teacher's RPN
    and box head ran on the student's anchors and sampled proposals, so rows line up.
    """

    student: Dict[str, Any]
    teacher: Dict[str, Any]
    gt_instances: List[Instances]
    image_sizes: List[Tuple[int, int]]  # (h, w) of each image before padding
    iteration: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def check_feature_names(
    loss_name: str, names: Sequence[str], student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]
) -> None:
    """Stop with a message naming the levels each network has if a loss asks for one it lacks."""
    for network, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
        missing = [n for n in names if n not in shapes]
        if missing:
            raise ValueError(
                f"KD.{loss_name.upper()}.IN_FEATURES asks for {missing}, which the {network} does not have. "
                f"Student features: {sorted(student_shapes)}; teacher features: {sorted(teacher_shapes)}."
            )
    for name in names:
        if student_shapes[name].stride != teacher_shapes[name].stride:
            raise ValueError(
                f"KD.{loss_name.upper()}: feature '{name}' has stride {student_shapes[name].stride} in the student "
                f"but {teacher_shapes[name].stride} in the teacher; pair levels of equal stride."
            )


def kd_loss_classes(cfg) -> Dict[str, type]:
    """The classes of the losses named in ``cfg.KD.LOSSES``; an unknown name stops here."""
    registered = sorted(name for name, _ in KD_LOSS_REGISTRY)
    unknown = [name for name in cfg.KD.LOSSES if name not in registered]
    if unknown:
        raise ValueError(f"Unknown distillation loss(es) {unknown} in KD.LOSSES; registered losses: {registered}")
    return {name: KD_LOSS_REGISTRY.get(name) for name in cfg.KD.LOSSES}


def loss_needs_teacher(cls: type) -> bool:
    """Whether a loss class reads a teacher network (the default; VirtualTeacher does not)."""
    return getattr(cls, "needs_teacher", True)


def losses_need_teacher(cfg) -> bool:
    """False when every enabled loss works without a teacher network (or none is enabled)."""
    return any(loss_needs_teacher(cls) for cls in kd_loss_classes(cfg).values())


def build_kd_losses(
    cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]
) -> nn.ModuleDict:
    """Build every loss in ``cfg.KD.LOSSES``, keyed by lower-case name."""
    return nn.ModuleDict(
        {name.lower(): cls(cfg, student_shapes, teacher_shapes) for name, cls in kd_loss_classes(cfg).items()}
    )


def weighted(name: str, weight: float, value: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The one-term dict a loss returns: ``{"loss_kd_<name>": weight * value}``."""
    return {f"loss_kd_{name}": weight * value}
