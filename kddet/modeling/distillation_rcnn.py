"""DistillationRCNN: a student Faster R-CNN trained with a frozen teacher beside it.

The model *is* the student (a GeneralizedRCNN subclass), so its checkpoint, its optimizer and
DDP see the student and the distillation adapters only. The teacher is held outside the module
tree: it never enters ``state_dict()``, ``parameters()`` or ``train()``; it stays in eval mode
and runs under ``no_grad``, in the precision and memory format of ``KD.TEACHER`` whatever the
student's autocast, and its records reach the losses in fp32. In eval mode the model returns
exactly what the student returns. Its backbone and RPN run before the student's forward, its box
head after it, on the student's sampled proposals; the records no loss reads are not kept.
"""

from typing import Dict, List, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

from ..balance import LossBalancer
from ..capture import RCNNProbe
from ..losses import DistillationBatch, build_kd_losses, losses_need_teacher
from ..teacher import build_teacher, check_same_anchors, teacher_dtype

__all__ = ["DistillationRCNN"]


def build_balancer(cfg, kd_losses: nn.ModuleDict) -> Optional[LossBalancer]:
    """The balancer of ``KD.BALANCE`` over the losses it names (all enabled ones when it names none)."""
    node = cfg.KD.BALANCE
    if not node.ENABLED:
        return None
    names = [name.lower() for name in node.LOSSES] or list(kd_losses)
    unknown = sorted(set(names) - set(kd_losses))
    if unknown:
        raise ValueError(f"KD.BALANCE.LOSSES names {unknown}, which are not in KD.LOSSES = {list(cfg.KD.LOSSES)}.")
    return LossBalancer(names, node.RATIO, node.ITERS)


@META_ARCH_REGISTRY.register()
class DistillationRCNN(GeneralizedRCNN):
    @configurable
    def __init__(
        self,
        *,
        teacher: Optional[GeneralizedRCNN],
        kd_losses: nn.ModuleDict,
        kd_balancer: Optional[LossBalancer] = None,
        teacher_precision: torch.dtype = torch.float32,
        teacher_channels_last: bool = False,
        **student_kwargs,
    ):
        """
        Args:
            teacher: the frozen teacher, or None when no enabled loss needs one.
            kd_losses: distillation losses (``DistillationLoss``) by name.
            kd_balancer: sets the weights of (some of) ``kd_losses`` from the run (``KD.BALANCE``).
            teacher_precision: the dtype the teacher computes in (autocast unless float32).
            teacher_channels_last: feed the teacher channels_last images (its weights are, see build_teacher).
            student_kwargs: GeneralizedRCNN's arguments for the student.
        """
        super().__init__(**student_kwargs)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: see the module docstring
        self.kd_losses = kd_losses
        self.kd_balancer = kd_balancer
        self.teacher_precision = teacher_precision
        self.teacher_channels_last = teacher_channels_last
        # Which records the losses read of each network; both are checked to have them now, not at the first step.
        self.probe = RCNNProbe(
            {type(loss).__name__: loss.needs for loss in kd_losses.values()},
            {
                type(loss).__name__: loss.needs
                for loss in kd_losses.values()
                if loss.needs_teacher and teacher is not None
            },
        )
        self.probe.check(self, teacher)
        if teacher is not None:
            self._check_teacher_fits()

    @classmethod
    def from_config(cls, cfg, load_teacher_weights: bool = True):
        """``load_teacher_weights=False`` leaves the teacher's weights random (the ``--check`` dry run)."""
        student_kwargs = super().from_config(cfg)
        teacher = build_teacher(cfg, load_weights=load_teacher_weights) if losses_need_teacher(cfg) else None
        student_shapes = student_kwargs["backbone"].output_shape()
        teacher_shapes = teacher.backbone.output_shape() if teacher is not None else {}
        kd_losses = build_kd_losses(cfg, student_shapes, teacher_shapes)
        return dict(
            student_kwargs,
            teacher=teacher,
            kd_losses=kd_losses,
            kd_balancer=build_balancer(cfg, kd_losses),
            teacher_precision=teacher_dtype(cfg),
            teacher_channels_last=cfg.KD.TEACHER.CHANNELS_LAST,
        )

    def _check_teacher_fits(self) -> None:
        student_div, teacher_div = self.backbone.size_divisibility, self.teacher.backbone.size_divisibility
        if student_div != teacher_div:
            raise ValueError(
                f"Student and teacher pad images differently (size_divisibility {student_div} vs {teacher_div}); "
                "their feature maps would not align. Use backbones with the same coarsest stride."
            )
        if "rpn" in self.probe.teacher_kinds:  # the teacher's RPN scores the student's anchors
            check_same_anchors(self.proposal_generator, self.teacher.proposal_generator)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        # The teacher's backbone and RPN run before the student's forward: their transient maps are
        # then freed before the student's activations are held for its backward, not added to them.
        teacher = self._teacher_image_records(batched_inputs)
        with self.probe.recorder(self) as recorder:
            losses = super().forward(batched_inputs)
        batch = DistillationBatch(
            student=recorder.records,
            teacher=self._teacher_student_records(teacher, recorder.records),
            gt_instances=[x["instances"].to(self.device) for x in batched_inputs],
            image_sizes=[tuple(x["image"].shape[-2:]) for x in batched_inputs],
            iteration=get_event_storage().iter,
        )
        del teacher
        for loss in self.kd_losses.values():
            # A loss may reweight a term of the student's own (Chen et al.: mu * hard + (1 - mu) * soft).
            for name, scale in loss.student_loss_scale.items():
                losses[name] = losses[name] * scale
        terms_by_loss = {name: loss(batch) for name, loss in self.kd_losses.items()}
        if self.kd_balancer is not None:
            terms_by_loss = self.kd_balancer(sum(losses.values()), terms_by_loss)
        for terms in terms_by_loss.values():
            losses.update(terms)
        return losses

    # The teacher computes in ``teacher_precision`` (not in the student's autocast: an fp32 teacher
    # stays fp32 under SOLVER.AMP) and the records the losses read reach them in fp32. no_grad, not
    # inference_mode: the losses save the records for their backward, which inference tensors cannot be.
    def _teacher_autocast(self) -> torch.autocast:
        dtype = self.teacher_precision
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    @torch.no_grad()
    def _teacher_image_records(self, batched_inputs: List[Dict]) -> Dict:
        """The teacher's records that need only the images (its FPN maps and RPN outputs), in its own
        precision: they are held through the student's forward."""
        if not self.probe.teacher_image_kinds:
            return {}
        if self.teacher.input_format != self.input_format:  # RGB <-> BGR
            batched_inputs = [dict(x, image=x["image"].flip(0)) for x in batched_inputs]
        images = self.teacher.preprocess_image(batched_inputs).tensor  # the teacher's own pixel mean, std and padding
        if self.teacher_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._teacher_autocast():
            return self.probe.teacher_records(self.teacher, self.probe.teacher_image_kinds, images, {}, {})

    @torch.no_grad()
    def _teacher_student_records(self, records: Dict, student: Dict) -> Dict:
        """The records the losses read, in fp32: ``records`` completed with the teacher's box head's
        on the student's sampled proposals, without those no loss reads (maps only the box head needed)."""
        if self.probe.teacher_student_kinds:
            with self._teacher_autocast():
                kinds = self.probe.teacher_student_kinds
                records = self.probe.teacher_records(self.teacher, kinds, None, student, records)
        read = {name: records[name] for name in self.probe.teacher_read}
        return tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t, read)
