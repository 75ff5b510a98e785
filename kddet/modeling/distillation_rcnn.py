"""DistillationRCNN: a student Faster R-CNN trained with a frozen teacher beside it.

The model *is* the student (a GeneralizedRCNN subclass), so its checkpoint, its optimizer and
DDP see the student and the distillation adapters only. The teacher is held outside the module
tree: it never enters ``state_dict()``, ``parameters()`` or ``train()``; it stays in eval mode
and runs under ``no_grad``, in the precision and memory format of ``KD.TEACHER`` whatever the
student's autocast, and its records reach the losses in fp32. In eval mode the model returns
exactly what the student returns.
"""
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

from ..balance import LossBalancer
from ..capture import STUDENT_SOURCES, Recorder
from ..losses import DistillationBatch, build_kd_losses, losses_need_teacher
from ..teacher import build_teacher, check_same_anchors, teacher_dtype, teacher_images

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
            kd_losses: distillation losses by name, each with ``needs`` and ``forward(batch)``.
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
        self._needs = {need for loss in kd_losses.values() for need in loss.needs}
        if self._needs & {"box_features", "predictions"}:
            self._needs.add("proposals")  # the teacher's box head runs on the student's proposals
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
            student_kwargs, teacher=teacher, kd_losses=kd_losses, kd_balancer=build_balancer(cfg, kd_losses),
            teacher_precision=teacher_dtype(cfg), teacher_channels_last=cfg.KD.TEACHER.CHANNELS_LAST,
        )

    def _check_teacher_fits(self) -> None:
        student_div, teacher_div = self.backbone.size_divisibility, self.teacher.backbone.size_divisibility
        if student_div != teacher_div:
            raise ValueError(
                f"Student and teacher pad images differently (size_divisibility {student_div} vs {teacher_div}); "
                "their feature maps would not align. Use backbones with the same coarsest stride."
            )
        if "rpn" in self._needs:  # the teacher's RPN scores the student's anchors
            check_same_anchors(self.proposal_generator, self.teacher.proposal_generator)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        sources = {need: STUDENT_SOURCES[need] for need in self._needs}
        with Recorder(self, sources) as recorder:
            losses = super().forward(batched_inputs)
        batch = DistillationBatch(
            student=recorder.records,
            teacher=self._teacher_records(batched_inputs, recorder.records),
            gt_instances=[x["instances"].to(self.device) for x in batched_inputs],
            image_sizes=[tuple(x["image"].shape[-2:]) for x in batched_inputs],
            iteration=get_event_storage().iter,
        )
        for loss in self.kd_losses.values():
            # A loss may reweight a term of the student's own (Chen et al.: mu * hard + (1 - mu) * soft).
            for name, scale in getattr(loss, "student_loss_scale", {}).items():
                losses[name] = losses[name] * scale
        terms_by_loss = {name: loss(batch) for name, loss in self.kd_losses.items()}
        if self.kd_balancer is not None:
            terms_by_loss = self.kd_balancer(sum(losses.values()), terms_by_loss)
        for terms in terms_by_loss.values():
            losses.update(terms)
        return losses

    # no_grad, not inference_mode: the losses save the records for their backward, which
    # inference tensors cannot be.
    @torch.no_grad()
    def _teacher_records(self, batched_inputs: List[Dict], student: Dict) -> Dict:
        """The teacher's records in fp32, computed in ``teacher_precision`` (not in the student's
        autocast: an fp32 teacher stays fp32 under SOLVER.AMP)."""
        if self.teacher is None:
            return {}
        images = teacher_images(self.teacher, self.input_format, batched_inputs).tensor
        if self.teacher_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = self.teacher_precision
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            records = self._run_teacher(images, student)
        return _to_float32(records)

    def _run_teacher(self, images: torch.Tensor, student: Dict) -> Dict:
        """Run the teacher only as far as the enabled losses need, on the student's anchors and
        sampled proposals, so that its outputs line up with the student's."""
        teacher = self.teacher
        features = teacher.backbone(images)
        records = {"features": features}
        if "rpn" in self._needs:
            rpn = teacher.proposal_generator
            records["rpn"] = rpn.rpn_head([features[f] for f in rpn.in_features])
        if self._needs & {"box_features", "predictions"}:
            roi_heads = teacher.roi_heads
            boxes = [p.proposal_boxes for p in student["proposals"]]
            pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
            records["box_features"] = roi_heads.box_head(pooled)
            records["predictions"] = roi_heads.box_predictor(records["box_features"])
        return records


def _to_float32(records: Any) -> Any:
    """``records`` (tensors in nested dicts, lists and tuples) with every floating-point tensor in fp32."""
    if isinstance(records, torch.Tensor):
        return records.float() if records.is_floating_point() else records
    if isinstance(records, dict):
        return {k: _to_float32(v) for k, v in records.items()}
    if isinstance(records, (list, tuple)):
        return type(records)(_to_float32(v) for v in records)
    return records
