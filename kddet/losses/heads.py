"""Rows of the detector heads that the head- and relation-level losses compare.

The RPN's raw outputs are per level and per map position; detectron2's ``RPN.forward`` lays
them out as one row per anchor (level, then y, x, then anchor), the order of the anchors and of
the labels ``label_and_sample_anchors`` returns. The RoI head already has one row per sampled
proposal; for class-specific box deltas, the row's ground-truth class picks the 4 columns.
"""

from typing import Callable, List, Sequence, Tuple

import torch

from detectron2.layers import cat, nonzero_tuple
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from ..capture import RPNOutputs

__all__ = [
    "class_weights",
    "gt_class_deltas",
    "mean_over_images",
    "per_image",
    "rcn_foreground",
    "rpn_regression_targets",
    "rpn_rows",
]


def rpn_rows(rpn_outputs: RPNOutputs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``rpn_head`` outputs as objectness logits ``(N, R)`` and deltas ``(N, R, 4)``, one row per
    anchor in the order of ``RPN.forward`` and ``label_and_sample_anchors``."""
    # (N, A, H, W) -> (N, H*W*A)
    logits = cat([x.permute(0, 2, 3, 1).flatten(1) for x in rpn_outputs.objectness_logits], dim=1)
    deltas = cat(
        [
            x.view(x.shape[0], -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in rpn_outputs.anchor_deltas
        ],
        dim=1,
    )  # (N, A*4, H, W) -> (N, H*W*A, 4)
    return logits, deltas


def rpn_regression_targets(
    anchors: List[Boxes], matched_gt_boxes: Sequence[torch.Tensor], box2box_transform: Box2BoxTransform
) -> torch.Tensor:
    """``(N, R, 4)`` deltas from every anchor to its matched ground-truth box, as the RPN's loss
    computes them (meaningful where the anchor is foreground)."""
    anchors = Boxes.cat(anchors).tensor
    return torch.stack([box2box_transform.get_deltas(anchors, gt) for gt in matched_gt_boxes])


def rcn_foreground(
    proposals: List[Instances], box2box_transform: Box2BoxTransform, num_classes: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Foreground rows of the sampled proposals: their indices, their classes and the deltas
    from each proposal to its ground-truth box (the RoI head's regression targets)."""
    gt_classes = cat([p.gt_classes for p in proposals])
    fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < num_classes))[0]
    boxes = cat([p.proposal_boxes.tensor for p in proposals])
    # Images without ground truth have no gt_boxes field, and no foreground rows either.
    gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
    return fg, gt_classes[fg], box2box_transform.get_deltas(boxes[fg], gt_boxes[fg])


def gt_class_deltas(box_deltas: torch.Tensor, fg: torch.Tensor, fg_classes: torch.Tensor) -> torch.Tensor:
    """The 4 predicted deltas of each foreground row: the gt-class columns of class-specific
    ``(R, 4K)`` deltas, as ``FastRCNNOutputLayers.box_reg_loss`` picks them, or the row itself
    when regression is class-agnostic ``(R, 4)``."""
    if box_deltas.shape[1] == 4:
        return box_deltas[fg]
    return box_deltas.view(box_deltas.shape[0], -1, 4)[fg, fg_classes]


def class_weights(num_columns: int, background_weight: float, device: torch.device) -> torch.Tensor:
    """``w_c``: 1 for every object class, ``background_weight`` for the last column (detectron2
    puts background last, in the RPN's two columns as in the RoI head's K+1)."""
    weights = torch.ones(num_columns, device=device)
    weights[-1] = background_weight
    return weights


def per_image(rows: torch.Tensor, proposals: List[Instances]) -> List[torch.Tensor]:
    """Split rows of all sampled proposals of a batch into one chunk per image."""
    return list(rows.split([len(p) for p in proposals]))


def mean_over_images(
    relation_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    proposals: List[Instances],
    min_rows: int = 2,
) -> torch.Tensor:
    """``relation_loss(student, teacher)`` on the RoIs of each image, the mean over images with at
    least ``min_rows`` RoIs. Relations are taken within an image: its RoIs play the part of the
    papers' batch, and the cost stays quadratic (or cubic) in one image's RoIs only. With no such
    image, a zero that is still part of the student's graph."""
    pairs = zip(per_image(student_rows, proposals), per_image(teacher_rows, proposals))
    losses = [relation_loss(s, t) for s, t in pairs if len(s) >= min_rows]
    if not losses:
        return student_rows.float().sum() * 0.0
    return torch.stack(losses).mean()
