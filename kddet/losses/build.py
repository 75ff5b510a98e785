"""The registry of distillation losses, the contract every loss fulfils, and what it receives.

A loss subclasses ``DistillationLoss``, which declares what the meta-architecture reads of it, and is
registered in ``KD_LOSS_REGISTRY`` under its class name: its one name, which ``KD.LOSSES`` selects it
by, its node ``KD.<NAME>`` spells upper-cased, and its checkpoint keys ``kd_losses.<name>.*`` and
metrics ``loss_kd_<name>*`` lower-cased. It is built from its node through ``@configurable``
``from_config(cls, cfg, student_shapes, teacher_shapes)``.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from detectron2.utils.registry import Registry

from ..capture import RECORD_KINDS

__all__ = [
    "KD_LOSS_REGISTRY",
    "DistillationBatch",
    "DistillationLoss",
    "build_kd_losses",
    "check_feature_names",
    "kd_loss_classes",
    "losses_need_teacher",
]


@dataclass
class DistillationBatch:
    """What student and teacher produced on one training batch.

    ``student`` maps the record kinds the enabled losses read (``kddet.capture.RECORD_KINDS``:
    "features", "anchors", "rpn", "rpn_labels", "proposals", "box_features", "predictions") to the
    student's records. ``teacher`` holds the kinds a teacher computes ("features", "rpn",
    "box_features", "predictions"), its RPN and box head run on the student's anchors and sampled
    proposals, so rows line up; it is empty when no enabled loss reads a teacher.
    """

    student: Dict[str, Any]
    teacher: Dict[str, Any]
    gt_instances: List[Instances]
    image_sizes: List[Tuple[int, int]]  # (h, w) of each image before padding
    iteration: int = 0


class DistillationLoss(nn.Module):
    """What every distillation loss offers the meta-architecture.

    Class attributes:
        needs: the record kinds it reads (``kddet.capture.RECORD_KINDS``), of the student, and of
            the teacher for the kinds a teacher computes; the networks record and compute only
            what the enabled losses need. A kind that does not exist stops the build.
        needs_teacher: False for a loss that reads the student alone (VirtualTeacher): no teacher
            is built for it.

    ``default_config()`` gives the defaults of its node ``KD.<NAME>`` (``add_kddet_config`` adds the
    node of every registered loss; ``config_node(cfg)`` reads it), ``student_loss_scale`` factors
    for detectron2's own loss terms (Chen et al.'s ``mu * hard loss``), and ``forward(batch)``
    returns a dict of weighted terms named ``loss_kd_*``.
    """

    needs: ClassVar[Tuple[str, ...]] = ()
    needs_teacher: ClassVar[bool] = True

    @classmethod
    def default_config(cls) -> CfgNode:
        """The defaults of the loss's node ``KD.<NAME>``."""
        return CfgNode()

    @classmethod
    def config_node(cls, cfg: CfgNode) -> CfgNode:
        """The loss's node of ``cfg``: ``KD.<NAME>``, its registered name upper-cased."""
        return cfg.KD[cls.__name__.upper()]

    @property
    def student_loss_scale(self) -> Dict[str, float]:
        """Factors by which detectron2's own loss terms (``loss_cls``, ...) are multiplied; none by default."""
        return {}

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def term_name(cls, part: str = "") -> str:
        """The metric name of the loss's term, ``loss_kd_<name>``, or ``loss_kd_<name>_<part>`` for one of
        several (RKD's distance and angle): the one name, lower-cased as in the checkpoint."""
        return f"loss_kd_{cls.__name__.lower()}" + (f"_{part}" if part else "")

    def weighted(self, weight: float, value: torch.Tensor, part: str = "") -> Dict[str, torch.Tensor]:
        """The one-term dict a loss returns: ``{term_name(part): weight * value}``."""
        return {self.term_name(part): weight * value}


class _LossRegistry(Registry):
    def _do_register(self, name: str, obj: Any) -> None:
        if not (isinstance(obj, type) and issubclass(obj, DistillationLoss)):
            raise TypeError(
                f"{name} does not subclass DistillationLoss (kddet/losses/build.py): it cannot be registered as a loss."
            )
        super()._do_register(name, obj)


KD_LOSS_REGISTRY = _LossRegistry("KD_LOSS")
KD_LOSS_REGISTRY.__doc__ = """Distillation losses (``DistillationLoss`` subclasses), selected by name in
``cfg.KD.LOSSES``."""


def check_feature_names(
    loss_name: str,
    names: Sequence[str],
    student_shapes: Mapping[str, ShapeSpec],
    teacher_shapes: Mapping[str, ShapeSpec],
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
    """The classes of the losses named in ``cfg.KD.LOSSES``; an unknown name, or a loss that needs
    an unknown record kind, stops here."""
    registered = sorted(name for name, _ in KD_LOSS_REGISTRY)
    unknown = [name for name in cfg.KD.LOSSES if name not in registered]
    if unknown:
        raise ValueError(f"Unknown distillation loss(es) {unknown} in KD.LOSSES; registered losses: {registered}")
    classes = {name: KD_LOSS_REGISTRY.get(name) for name in cfg.KD.LOSSES}
    for name, cls in classes.items():
        unknown_kinds = [kind for kind in cls.needs if kind not in RECORD_KINDS]
        if unknown_kinds:
            raise ValueError(
                f"{name}.needs names record kind(s) {unknown_kinds} that kddet does not record; the kinds are "
                f"{list(RECORD_KINDS)} (kddet/capture.py)."
            )
    return classes


def losses_need_teacher(cfg) -> bool:
    """False when every enabled loss works without a teacher network (or none is enabled)."""
    return any(cls.needs_teacher for cls in kd_loss_classes(cfg).values())


def build_kd_losses(
    cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]
) -> nn.ModuleDict:
    """Build every loss in ``cfg.KD.LOSSES``, keyed by its name lower-cased (its checkpoint keys are
    ``kd_losses.<name>.*``, its metrics ``loss_kd_<name>*``)."""
    return nn.ModuleDict(
        {name.lower(): cls(cfg, student_shapes, teacher_shapes) for name, cls in kd_loss_classes(cfg).items()}
    )
