"""Mixed precision: every registered loss under CPU autocast (fp16 and bf16) on the records a
model in autocast produces, at unit and large scale, against its float32 value; and the shapes
teacher's FPN features under autocast against float32."""

import copy

import pytest
import torch

from detectron2.modeling import build_model

from conftest import TEACHER_CONFIG, load_config
from kddet.losses import KD_LOSS_REGISTRY, DistillationBatch
from test_feature_losses import build_loss, make_batch
from test_head_losses import NUM_CLASSES, rcn_batch, rpn_records, sampled_proposals

# The shapes student's box-head width and detectron2's (MODEL.ROI_BOX_HEAD.FC_DIM, kept by the VOC
# and COCO configs): at x16 a relu'd row of 1024 has a squared norm near 1024 / 2 * 16^2 = 131072,
# twice fp16's largest value (65504).
BOX_FEATURE_DIMS = (256, 1024)
# Relative tolerance of a loss in autocast against float32, about three times the largest error
# measured (fp16 3.6e-4: RKD; bf16 1.6e-3: FSP): the network outputs are rounded to 11 (fp16) or
# 8 (bf16) significant bits before a loss sees them.
RTOL = {torch.float16: 1e-3, torch.bfloat16: 5e-3}


def realistic_batch(loss) -> DistillationBatch:
    """The records ``loss`` reads, float32, the student's requiring grad: FPN features with anchors
    and boxes (test_feature_losses), or RPN outputs with sampled anchors, or sampled proposals with
    box-head features and predictions (test_head_losses)."""
    if "features" in loss.needs:
        return make_batch(4, 6)
    if "rpn" in loss.needs:
        student, anchors, sampled = rpn_records()
        teacher, _, _ = rpn_records()
        return DistillationBatch(
            student={"rpn": student, "rpn_labels": sampled, "anchors": anchors},
            teacher={"rpn": teacher},
            gt_instances=[],
            image_sizes=[],
        )
    proposals = sampled_proposals([[0, 2, 3, 1, 3, 3, 0, 3], [3, 1, 3, 2, 0, 3]])  # 3 is background
    return rcn_batch(proposals, box_dim=4 * NUM_CLASSES, feature_dims=BOX_FEATURE_DIMS)


# What the networks output, in autocast's dtype when the model runs in it; labels, matched boxes,
# anchors and proposals are not.
NETWORK_OUTPUTS = ("features", "rpn", "box_features", "predictions")


def float_tensors(records):
    """The floating-point tensors of nested tuples, lists and dicts."""
    if isinstance(records, torch.Tensor):
        return [records] if records.is_floating_point() else []
    if isinstance(records, dict):
        records = list(records.values())
    if isinstance(records, (list, tuple)):
        return [t for r in records for t in float_tensors(r)]
    return []


def map_tensors(records, fn):
    """``records`` with ``fn`` applied to each of its floating-point tensors."""
    if isinstance(records, torch.Tensor):
        return fn(records) if records.is_floating_point() else records
    if isinstance(records, tuple) and hasattr(records, "_fields"):  # a named tuple
        return type(records)(*(map_tensors(r, fn) for r in records))
    if isinstance(records, (list, tuple)):
        return type(records)(map_tensors(r, fn) for r in records)
    if isinstance(records, dict):
        return {k: map_tensors(v, fn) for k, v in records.items()}
    return records


def scaled(batch: DistillationBatch, scale: float, dtype: torch.dtype) -> DistillationBatch:
    """``batch`` with the network outputs times ``scale`` in ``dtype``, as a model in autocast gives them."""

    def convert(records):
        return {
            k: map_tensors(v, lambda t: (scale * t).to(dtype)) if k in NETWORK_OUTPUTS else v
            for k, v in records.items()
        }

    return DistillationBatch(
        student=convert(batch.student),
        teacher=convert(batch.teacher),
        gt_instances=batch.gt_instances,
        image_sizes=batch.image_sizes,
    )


@pytest.mark.parametrize("scale", [1.0, 16.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(name for name, _ in KD_LOSS_REGISTRY))
def test_loss_under_autocast_matches_float32(name, dtype, scale):
    torch.manual_seed(0)
    loss = build_loss(name, 4, 6, "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES)
    reference_loss = copy.deepcopy(loss)  # OFD updates its margins on every call
    batch = realistic_batch(loss)
    leaves = [t for t in float_tensors(batch.student) if t.requires_grad]

    torch.manual_seed(1)  # RKD draws the RoIs of its angle term
    reference = reference_loss(scaled(batch, scale, torch.float32))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=dtype):
        terms = loss(scaled(batch, scale, dtype))

    assert terms.keys() == reference.keys()
    for key, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (key, value)
        torch.testing.assert_close(value, reference[key].detach(), rtol=RTOL[dtype], atol=1e-6)
    inputs = leaves + [p for p in loss.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(terms.values()), inputs, allow_unused=True)
    for tensor, grad in zip(inputs, grads):
        assert grad is None or torch.isfinite(grad).all(), f"non-finite gradient for a {tuple(tensor.shape)} input"


# Relative error ||F_autocast - F_fp32|| / ||F_fp32|| allowed on each FPN level, about three times
# what was measured on random weights (fp16 1.5e-3, bf16 1.1e-2).
FEATURE_RTOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_teacher_features_under_autocast_match_float32(dtype):
    """With KD.TEACHER.PRECISION fp16 or bf16 the teacher runs in autocast (tests/test_fast_teacher.py
    compares every record kind)."""
    torch.manual_seed(0)
    teacher = build_model(load_config(TEACHER_CONFIG)).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)} for _ in range(2)]
    with torch.no_grad():
        images = teacher.preprocess_image(inputs).tensor
        reference = teacher.backbone(images)
        with torch.autocast("cpu", dtype=dtype):
            features = teacher.backbone(images)
    assert features.keys() == reference.keys()
    for level, value in features.items():
        assert value.dtype == dtype and torch.isfinite(value).all(), level
        error = (value.float() - reference[level]).norm() / reference[level].norm()
        assert error < FEATURE_RTOL[dtype], (level, error.item())
