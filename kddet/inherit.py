"""Inheriting: a student starts from its teacher's tensors outside the backbone (``KD.TEACHER.INIT_STUDENT``).

FGD's and MGD's code bases start a student whose FPN and heads are shaped like its teacher's from
the teacher's weights ("inheriting strategy", Yang et al., CVPR 2022): the student keeps its own
pretrained feature extractor (``MODEL.WEIGHTS``) and takes every other tensor of the teacher whose
name and shape it shares. Tensors that differ in shape (an FPN lateral conv reading a narrower
backbone, a box head of another width) stay the student's own, and the log says which and why.
A resumed run already holds what it inherited, so nothing is copied again.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = [
    "NOTHING_INHERITED",
    "NO_TEACHER",
    "Inheritance",
    "feature_extractor_prefix",
    "inherit_from_teacher",
    "inheritance_plan",
    "plan_inheritance",
]


@dataclass
class Inheritance:
    """What the student takes of its teacher.

    Attributes:
        copied: names of the teacher tensors copied into the student.
        skipped: (name, why) of the teacher tensors outside the feature extractor that are not copied.
        student_only: names of the student's tensors outside the feature extractor that the teacher lacks.
        feature_extractor: the prefix left to ``MODEL.WEIGHTS``, and how many teacher tensors lie under it.
    """

    copied: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    student_only: List[str] = field(default_factory=list)
    feature_extractor: Tuple[str, int] = ("backbone.", 0)

    def describe(self) -> str:
        """The log's account: counts, then every name copied and every name not copied with its reason."""
        prefix, count = self.feature_extractor
        lines = [
            f"KD.TEACHER.INIT_STUDENT: {len(self.copied)} teacher tensor(s) copied into the student, "
            f"{len(self.skipped)} not copied; the feature extractor ({prefix}*, {count} teacher tensors) "
            "keeps the student's own MODEL.WEIGHTS."
        ]
        if self.copied:
            lines.append("  copied: " + ", ".join(self.copied))
        lines += [f"  not copied: {name} ({why})" for name, why in self.skipped]
        if self.student_only:
            lines.append("  the student's own (the teacher has no such tensor): " + ", ".join(self.student_only))
        return "\n".join(lines)


def feature_extractor_prefix(detector: nn.Module) -> str:
    """The part a student keeps from ``MODEL.WEIGHTS``: the FPN's bottom-up network, or the whole
    backbone where there is no FPN."""
    return "backbone.bottom_up." if hasattr(detector.backbone, "bottom_up") else "backbone."


def plan_inheritance(
    student_state: Dict[str, torch.Tensor], teacher_state: Dict[str, torch.Tensor], keep_prefix: str
) -> Inheritance:
    """Which teacher tensors (``teacher_state``) the student (``student_state``) takes: those outside
    ``keep_prefix`` whose name it has, with the same shape, and whose layer's other tensors all do
    too (a bias without its weight would be a stranger's). The student's own adapters
    (``kd_losses.``, ``kd_balancer.``) have no counterpart in a teacher and are never touched."""
    plan = Inheritance(feature_extractor=(keep_prefix, sum(name.startswith(keep_prefix) for name in teacher_state)))
    reasons = {}
    for name, tensor in teacher_state.items():
        if name.startswith(keep_prefix):
            continue
        if name not in student_state:
            reasons[name] = "the student has no such tensor"
        elif student_state[name].shape != tensor.shape:
            reasons[name] = f"shapes differ: teacher {tuple(tensor.shape)}, student {tuple(student_state[name].shape)}"
        else:
            reasons[name] = ""
    mismatched_layers = {_layer(name) for name, why in reasons.items() if why}
    for name, why in reasons.items():
        if not why and _layer(name) in mismatched_layers:
            why = f"another tensor of {_layer(name)} differs"
        if why:
            plan.skipped.append((name, why))
        else:
            plan.copied.append(name)
    distillation = ("kd_losses.", "kd_balancer.")
    plan.student_only = [
        name
        for name in student_state
        if not name.startswith((keep_prefix, *distillation)) and name not in teacher_state
    ]
    return plan


def _layer(name: str) -> str:
    """``roi_heads.box_head.fc1`` for ``roi_heads.box_head.fc1.weight``."""
    return name.rsplit(".", 1)[0]


NOTHING_INHERITED = (
    "KD.TEACHER.INIT_STUDENT copies nothing: no teacher layer outside the feature extractor has the student's "
    "shapes (see the list above). Give the student the teacher's FPN and box-head widths "
    "(MODEL.FPN.OUT_CHANNELS, MODEL.ROI_BOX_HEAD.FC_DIM), or set KD.TEACHER.INIT_STUDENT to False."
)
NO_TEACHER = (
    "KD.TEACHER.INIT_STUDENT copies the teacher's tensors into the student, but no loss in KD.LOSSES reads a "
    "teacher, so none is loaded: add a loss that reads one, or set KD.TEACHER.INIT_STUDENT to False."
)


def inheritance_plan(model: nn.Module) -> Inheritance:
    """What ``inherit_from_teacher`` would copy into ``model`` (a DistillationRCNN), without copying."""
    if getattr(model, "teacher", None) is None:
        raise ValueError(NO_TEACHER)
    return plan_inheritance(model.state_dict(), model.teacher.state_dict(), feature_extractor_prefix(model))


@torch.no_grad()
def inherit_from_teacher(model: nn.Module) -> Inheritance:
    """Copy into the student of ``model`` (a DistillationRCNN, its weights loaded) the teacher tensors
    that ``plan_inheritance`` picks, and return the plan."""
    plan = inheritance_plan(model)
    student_state, teacher_state = model.state_dict(), model.teacher.state_dict()
    for name in plan.copied:
        student_state[name].copy_(teacher_state[name])  # state_dict tensors share storage with the module's
    return plan
