"""Fine-grained feature imitation, FGFI (Wang et al., "Distilling Object Detectors with
Fine-grained Feature Imitation", CVPR 2019).

The student imitates the teacher only near objects: at the locations whose anchors match a
ground-truth box well. The anchors are the student's own, so the mask follows the student's
RPN settings. ``imitation_masks`` is shared with ``tools/visualize_imitation_mask.py``.
"""

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, pairwise_iou

from ..adapters import TermSchedule, build_adapter
from .build import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, check_feature_names
from .pkd import standardise_channels

__all__ = ["FGFI", "fgfi_loss", "imitation_masks"]


def imitation_masks(
    gt_boxes: Boxes,
    anchors: Sequence[Boxes],
    grid_sizes: Sequence[Tuple[int, int]],
    image_size: Tuple[int, int],
    psi: float = 0.5,
    max_iou_per_level: bool = False,
    boxes_per_chunk: int = 32,
) -> List[torch.Tensor]:
    """The imitation mask ``I`` of one image on each level, as (H, W) bool tensors (Wang et al. 2019).

    Each GT box gets the threshold ``F = psi * max IoU`` of its anchors, the max taken over all
    levels (default: a box is imitated where its anchors really match it) or over the level at
    hand (``max_iou_per_level``). A location is kept if any of its anchors has IoU > F with any
    box. Locations whose anchor centre lies on padding, outside ``image_size`` (h, w), are dropped.

    Args:
        anchors: per level, the anchors laid over the padded image, location-major with the same
            number of anchors at every location (the layout of detectron2's anchor generators).
        grid_sizes: per level, the (H, W) of the feature map.
        boxes_per_chunk: how many boxes' IoUs are held at once (memory, not the result).
    """
    device = anchors[0].device
    masks = [torch.zeros(grid, dtype=torch.bool, device=device) for grid in grid_sizes]
    # A box's threshold depends on its own IoUs only, so boxes go in chunks: the IoU matrices of a
    # crowded COCO image (~100 boxes, 200k p2 anchors) would otherwise take hundreds of megabytes.
    boxes = gt_boxes.tensor.to(device)
    for start in range(0, len(boxes), boxes_per_chunk):
        chunk = boxes[start : start + boxes_per_chunk]
        ious = [pairwise_iou(Boxes(chunk), level_anchors) for level_anchors in anchors]  # (M, H*W*A)
        best = [iou.max(dim=1).values for iou in ious]
        if not max_iou_per_level:
            best = [torch.stack(best).max(dim=0).values] * len(ious)
        for mask, iou, box_best, (h, w) in zip(masks, ious, best, grid_sizes):
            mask |= (iou > psi * box_best[:, None]).view(len(chunk), h, w, -1).any(dim=3).any(dim=0)
    height, width = image_size
    for mask, level_anchors, (h, w) in zip(masks, anchors, grid_sizes):
        centers = level_anchors.get_centers().view(h, w, -1, 2)[:, :, 0]
        mask &= (centers[..., 0] < width) & (centers[..., 1] < height)
    return masks


def fgfi_loss(
    students_adapted: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``L = 1/(2 N_p) * sum_{i,j,c} I_ij (r(F_S)_ijc - F_T_ijc)^2``, ``N_p = sum I`` (Wang et al. 2019,
    the imitation loss), summed over levels and images with one ``N_p`` for all of them, so that
    every imitated location weighs the same; 0 when nothing is imitated.

    Args:
        students_adapted, teachers: per level, (N, C, H, W) maps.
        masks: per level, the (N, H, W) 0/1 masks.
    """
    squared = [
        (mask[:, None].float() * (student.float() - teacher.float()).pow(2)).sum()
        for student, teacher, mask in zip(students_adapted, teachers, masks)
    ]
    num_imitated = torch.stack([mask.float().sum() for mask in masks]).sum()
    return torch.stack(squared).sum() / (2 * num_imitated.clamp(min=1))


@KD_LOSS_REGISTRY.register()
class FGFI(DistillationLoss):
    """Imitation of the teacher's features near objects, through a per-level 3x3 adapter."""

    needs = ("features", "anchors")

    @classmethod
    def default_config(cls) -> CfgNode:
        node = super().default_config()
        node.WEIGHT = 0.01  # the paper's lambda
        node.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]  # levels that carry RPN anchors
        node.ADAPTER = "conv3x3"
        node.PSI = 0.5  # a box's threshold is PSI * its best anchor IoU
        node.MAX_IOU_PER_LEVEL = False  # True: the best IoU of each level, not of all levels
        node.WARMUP_ITERS = 400  # the term is zeroed before this iteration (official code)
        node.FIT_ADAPTERS_IN_WARMUP = False  # True: during warm-up the adapters learn, the student is not pulled
        node.STANDARDIZE_TARGET = False  # as FitNet's STANDARDIZE_TARGET
        node.STANDARDIZE_STUDENT = False  # True: the adapted student map standardised too (PKD's norm, masked)
        node.FULL_MAP = False  # True: imitate every location, the masks' ablation at equal weight
        return node

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        in_features: Sequence[str],
        anchored_features: Sequence[str],
        adapters: Mapping[str, nn.Module],
        psi: float,
        max_iou_per_level: bool,
        schedule: TermSchedule,
        standardize_target: bool = False,
        standardize_student: bool = False,
        full_map: bool = False,
    ):
        """
        Args:
            anchored_features: the levels the student's anchors lie on, in the order of its anchor
                list (the RPN's ``in_features``); a box's best IoU is sought over all of them.
            schedule: no imitation before its ``iters`` (the official code's 400), while the student's
                RPN and heads find their feet; with ``fit_adapters``, the adapters learn on the
                student's detached features meanwhile, so that when the student starts to be pulled
                it is by what they cannot map, not by their random start.
            standardize_target: imitate the teacher's map with each channel standardised over the
                batch (as PKD does), so that the target's scale does not depend on the teacher's FPN.
            standardize_student: standardise the adapted student map's channels as well, so that the
                term compares the two maps' patterns and leaves the student's scale alone (with
                ``standardize_target``, PKD's comparison on FGFI's locations).
            full_map: imitate every location (a mask of ones, same normalisation): what the masks
                add over plain hints at equal weight.
        """
        super().__init__()
        self.weight = weight
        self.in_features = list(in_features)
        self.anchored_features = list(anchored_features)
        self.adapters = nn.ModuleDict(adapters)
        self.psi = psi
        self.max_iou_per_level = max_iou_per_level
        self.schedule = schedule
        self.standardize_target = standardize_target
        self.standardize_student = standardize_student
        self.full_map = full_map

    @classmethod
    def from_config(cls, cfg, student_shapes: Mapping[str, ShapeSpec], teacher_shapes: Mapping[str, ShapeSpec]):
        node = cls.config_node(cfg)
        check_feature_names("FGFI", node.IN_FEATURES, student_shapes, teacher_shapes)
        anchored = list(cfg.MODEL.RPN.IN_FEATURES)
        unanchored = [f for f in node.IN_FEATURES if f not in anchored]
        if unanchored:
            raise ValueError(
                f"KD.FGFI.IN_FEATURES asks for {unanchored}, which have no anchors: FGFI masks come from the "
                f"student's anchors, laid on MODEL.RPN.IN_FEATURES = {anchored}."
            )
        return {
            "weight": node.WEIGHT,
            "in_features": node.IN_FEATURES,
            "anchored_features": anchored,
            "adapters": {
                f: build_adapter(node.ADAPTER, student_shapes[f].channels, teacher_shapes[f].channels)
                for f in node.IN_FEATURES
            },
            "psi": node.PSI,
            "max_iou_per_level": node.MAX_IOU_PER_LEVEL,
            "schedule": TermSchedule.from_node(node, cfg.SOLVER.MAX_ITER),
            "standardize_target": node.STANDARDIZE_TARGET,
            "standardize_student": node.STANDARDIZE_STUDENT,
            "full_map": node.FULL_MAP,
        }

    def masks(self, batch: DistillationBatch) -> List[torch.Tensor]:
        """Per level of ``in_features``, the (N, H, W) imitation masks of the batch."""
        if self.full_map:
            features = batch.student["features"]
            return [
                features[f].new_ones((features[f].shape[0], *features[f].shape[-2:]), dtype=torch.bool)
                for f in self.in_features
            ]
        anchors = batch.student["anchors"]
        grid_sizes = [tuple(batch.student["features"][f].shape[-2:]) for f in self.anchored_features]
        per_image = [
            imitation_masks(instances.gt_boxes, anchors, grid_sizes, image_size, self.psi, self.max_iou_per_level)
            for instances, image_size in zip(batch.gt_instances, batch.image_sizes)
        ]
        per_level = dict(zip(self.anchored_features, (torch.stack(level) for level in zip(*per_image))))
        return [per_level[f] for f in self.in_features]

    def forward(self, batch: DistillationBatch) -> Dict[str, torch.Tensor]:
        student, teacher = batch.student["features"], batch.teacher["features"]
        targets = [
            standardise_channels(teacher[f]) if self.standardize_target else teacher[f] for f in self.in_features
        ]
        adapted = [
            self.adapters[f](self.schedule.student_input(student[f], batch.iteration).float()) for f in self.in_features
        ]
        if self.standardize_student:
            adapted = [standardise_channels(a) for a in adapted]
        loss = fgfi_loss(adapted, targets, self.masks(batch))
        return self.weighted(self.schedule.weight(self.weight, batch.iteration), loss)
