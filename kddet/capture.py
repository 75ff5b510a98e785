"""What the distillation losses read of the student and the teacher: the record kinds of the
R-CNN family, defined once here for both networks.

The student's records are what named parts of it return during its own forward pass: a forward
hook records a module's output, a temporary instance attribute records a method's return value;
both are removed again when the ``with`` block ends, and detectron2 computes as it would without
them. The teacher computes the kinds the enabled losses read of it on the student's anchors and
sampled proposals, so that its rows line up with the student's. ``RCNNProbe`` checks at build time
that both networks have the parts their records come from.
"""

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

__all__ = ["RECORD_KINDS", "BoxPredictions", "RCNNProbe", "RPNOutputs", "Recorder", "SampledAnchors"]


class RPNOutputs(NamedTuple):
    """What the RPN head returns, one tensor per level: objectness logits (N, A, H, W) and anchor
    deltas (N, A*4, H, W)."""

    objectness_logits: List[torch.Tensor]
    anchor_deltas: List[torch.Tensor]


class SampledAnchors(NamedTuple):
    """``label_and_sample_anchors``' result, one tensor per image over all anchors: the label of
    each (1 foreground, 0 background, -1 not sampled) and the ground-truth box it matched."""

    labels: List[torch.Tensor]
    matched_gt_boxes: List[torch.Tensor]


class BoxPredictions(NamedTuple):
    """What the box predictor returns for the sampled proposals: class scores (R, K+1) and box
    deltas (R, 4K), or (R, 4) when regression is class-agnostic."""

    scores: torch.Tensor
    proposal_deltas: torch.Tensor


def _teacher_features(teacher: nn.Module, images: torch.Tensor, student: Mapping, records: Mapping) -> Dict:
    return teacher.backbone(images)


def _teacher_rpn(teacher: nn.Module, images: torch.Tensor, student: Mapping, records: Mapping) -> RPNOutputs:
    rpn = teacher.proposal_generator
    return RPNOutputs(*rpn.rpn_head([records["features"][f] for f in rpn.in_features]))


def _teacher_box_features(teacher: nn.Module, images: torch.Tensor, student: Mapping, records: Mapping) -> torch.Tensor:
    heads = teacher.roi_heads
    boxes = [p.proposal_boxes for p in student["proposals"]]
    return heads.box_head(heads.box_pooler([records["features"][f] for f in heads.box_in_features], boxes))


def _teacher_predictions(
    teacher: nn.Module, images: torch.Tensor, student: Mapping, records: Mapping
) -> BoxPredictions:
    return BoxPredictions(*teacher.roi_heads.box_predictor(records["box_features"]))


TeacherComputation = Callable[[nn.Module, torch.Tensor, Mapping, Mapping], Any]


@dataclass(frozen=True)
class RecordKind:
    """One kind of record.

    Attributes:
        part: the part of the detector it comes from, as the distillation summary names it.
        student_source: the dotted path of the student's part whose output (or return value) it is.
        as_record: turns that output into the record (a named tuple where the output is a tuple).
        teacher: how the teacher computes its own, ``(teacher, images, student records, teacher
            records so far) -> record``; None for kinds only the student has (its anchors, its
            sampled anchors and proposals, which the teacher is run on).
        teacher_parts: the teacher's parts that computation reads, as dotted paths.
        uses: the kinds the teacher's computation reads: its own where it computes them, else the student's.
    """

    part: str
    student_source: str
    as_record: Callable[[Any], Any] = lambda output: output
    teacher: Optional[TeacherComputation] = None
    teacher_parts: Tuple[str, ...] = ()
    uses: Tuple[str, ...] = ()


_BOX_HEAD = ("roi_heads.box_in_features", "roi_heads.box_pooler", "roi_heads.box_head")

# In the order the teacher computes them (a kind after those it uses).
RECORD_KINDS: Dict[str, RecordKind] = {
    # FPN levels
    "features": RecordKind("features", "backbone", teacher=_teacher_features, teacher_parts=("backbone",)),
    "anchors": RecordKind("RPN", "proposal_generator.anchor_generator"),  # list of Boxes, one per level
    "rpn": RecordKind(
        "RPN",
        "proposal_generator.rpn_head",
        lambda output: RPNOutputs(*output),
        _teacher_rpn,
        ("proposal_generator.in_features", "proposal_generator.rpn_head"),
        ("features",),
    ),
    "rpn_labels": RecordKind(
        "RPN", "proposal_generator.label_and_sample_anchors", lambda output: SampledAnchors(*output)
    ),
    "proposals": RecordKind("RoI", "roi_heads.label_and_sample_proposals"),  # sampled Instances with gt fields
    "box_features": RecordKind(  # (R, D) box-head features of the sampled proposals
        "RoI",
        "roi_heads.box_head",
        teacher=_teacher_box_features,
        teacher_parts=_BOX_HEAD,
        uses=("features", "proposals"),
    ),
    "predictions": RecordKind(
        "RoI",
        "roi_heads.box_predictor",
        lambda output: BoxPredictions(*output),
        _teacher_predictions,
        (*_BOX_HEAD, "roi_heads.box_predictor"),
        ("box_features", "proposals"),
    ),
}


def _with_uses(kinds: Iterable[str], network_computes: Callable[[str], bool]) -> List[str]:
    """``kinds`` and every kind their computations use, in RECORD_KINDS order."""
    wanted = set(kinds)
    for name in reversed(list(RECORD_KINDS)):  # a kind's uses come before it
        if name in wanted and network_computes(name):
            wanted.update(RECORD_KINDS[name].uses)
    return [name for name in RECORD_KINDS if name in wanted]


def _missing_parts(network: nn.Module, paths: Iterable[str]) -> List[str]:
    missing = []
    for path in paths:
        owner = network
        for attr in path.split("."):
            owner = getattr(owner, attr, None)
        if owner is None:
            missing.append(path)
    return missing


def _why_missing(network: nn.Module) -> str:
    heads = getattr(network, "roi_heads", None)
    if type(heads).__name__ == "Res5ROIHeads":
        return (
            " It has Res5ROIHeads (detectron2's C4 models), which pool and run res5 inside the RoI head, with no "
            "separate box head to read or run on the other network's proposals. Use an FPN config "
            "(StandardROIHeads) for it, or losses on its features (IN_FEATURES it outputs, e.g. res4) only."
        )
    return " kddet reads Faster R-CNN with detectron2's RPN and StandardROIHeads."


class RCNNProbe:
    """The records the enabled losses read, for a GeneralizedRCNN student and teacher: which kinds
    the student records in its forward, which the teacher computes, and the check that both
    networks have the parts they come from."""

    def __init__(self, needs: Mapping[str, Iterable[str]], teacher_needs: Mapping[str, Iterable[str]]):
        """
        Args:
            needs: per loss, the record kinds it reads.
            teacher_needs: per loss that reads a teacher, the kinds it reads (of both networks).
        """
        self.needs = {loss: tuple(kinds) for loss, kinds in needs.items()}
        computes = lambda name: RECORD_KINDS[name].teacher is not None  # noqa: E731
        teacher_read = {kind for kinds in teacher_needs.values() for kind in kinds if computes(kind)}
        self.teacher_kinds = [name for name in _with_uses(teacher_read, computes) if computes(name)]
        self.teacher_read = [name for name in self.teacher_kinds if name in teacher_read]
        # The teacher's kinds that need nothing of the student's (its FPN maps, its RPN), which it can
        # compute before the student's forward; the rest run on the student's proposals.
        needs_student = set()
        for name in self.teacher_kinds:
            if any(not computes(use) or use in needs_student for use in RECORD_KINDS[name].uses):
                needs_student.add(name)
        self.teacher_image_kinds = [name for name in self.teacher_kinds if name not in needs_student]
        self.teacher_student_kinds = [name for name in self.teacher_kinds if name in needs_student]
        student_read = {kind for kinds in needs.values() for kind in kinds}
        student_read |= {use for name in self.teacher_kinds for use in RECORD_KINDS[name].uses if not computes(use)}
        self.student_kinds = [name for name in RECORD_KINDS if name in student_read]

    def check(self, student: nn.Module, teacher: Optional[nn.Module]) -> None:
        """Stop, naming the losses and the missing parts, if a network lacks a part a record comes from."""
        networks = [("student", student, self.student_kinds, lambda kind: (kind.student_source,))]
        if teacher is not None:
            networks.append(("teacher", teacher, self.teacher_kinds, lambda kind: kind.teacher_parts))
        for role, network, kinds, parts in networks:
            for name in kinds:
                missing = _missing_parts(network, parts(RECORD_KINDS[name]))
                if missing:
                    readers = [loss for loss, needs in self.needs.items() if name in _with_uses(needs, lambda _: True)]
                    raise ValueError(
                        f"{', '.join(readers)} in KD.LOSSES need{'s' if len(readers) == 1 else ''} the {role}'s "
                        f"'{name}' records, which come from {', '.join(parts(RECORD_KINDS[name]))}; the {role} "
                        f"({type(network).__name__}) has no {', '.join(missing)}.{_why_missing(network)}"
                    )

    def recorder(self, student: nn.Module) -> "Recorder":
        """A Recorder of the student's kinds: ``with probe.recorder(student) as r: student(x)``."""
        return Recorder(
            student,
            {name: RECORD_KINDS[name].student_source for name in self.student_kinds},
            {name: RECORD_KINDS[name].as_record for name in self.student_kinds},
        )

    def teacher_records(
        self,
        teacher: nn.Module,
        kinds: Iterable[str],
        images: Optional[torch.Tensor],
        student: Mapping[str, Any],
        records: Mapping[str, Any],
    ) -> Dict[str, Any]:
        """The teacher's ``kinds`` (``teacher_image_kinds`` or ``teacher_student_kinds``), computed on
        its preprocessed ``images``, the ``student``'s records and its own ``records`` so far."""
        records = dict(records)
        for name in kinds:
            records[name] = RECORD_KINDS[name].teacher(teacher, images, student, records)
        return records


class Recorder(contextlib.AbstractContextManager):
    """``with Recorder(model, {"features": "backbone"}) as rec: model(x)`` leaves the backbone's
    output in ``rec.records["features"]`` (passed through ``as_record["features"]`` where given)."""

    def __init__(self, model: nn.Module, sources: Mapping[str, str], as_record: Mapping[str, Callable] = {}):
        self.model = model
        self.sources = dict(sources)
        self.as_record = dict(as_record)
        self.records: Dict[str, Any] = {}
        self._undo = []

    def _store(self, name: str, value: Any) -> None:
        if name in self.records:
            raise RuntimeError(f"'{self.sources[name]}' ran twice in one forward; cannot tell which output to keep")
        self.records[name] = self.as_record.get(name, lambda output: output)(value)

    def __enter__(self) -> "Recorder":
        self.records = {}
        for name, path in self.sources.items():
            owner_path, _, attr = path.rpartition(".")
            owner = self.model.get_submodule(owner_path) if owner_path else self.model
            target = getattr(owner, attr)
            if isinstance(target, nn.Module):
                handle = target.register_forward_hook(lambda _m, _i, out, name=name: self._store(name, out))
                self._undo.append(handle.remove)
            else:
                owner.__dict__[attr] = self._wrap(name, target)
                self._undo.append(functools.partial(owner.__dict__.pop, attr))
        return self

    def _wrap(self, name: str, method):
        @functools.wraps(method)
        def recorded(*args, **kwargs):
            out = method(*args, **kwargs)
            self._store(name, out)
            return out

        return recorded

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()
