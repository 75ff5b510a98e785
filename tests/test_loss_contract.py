"""The loss contract (kddet.losses.DistillationLoss), checked on every registered loss: what it must
declare, where its gradients go, half precision, unknown levels and empty input. A loss added to
the registry is covered here without editing a list; a throwaway loss defined in this file trains
two steps with no other edit."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec

from conftest import STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.engine import Trainer
from kddet.losses import KD_LOSS_REGISTRY, DistillationBatch, DistillationLoss, build_kd_losses, kd_loss_classes
from kddet.losses.per_level import PerLevelFeatureLoss
from test_feature_losses import LEVELS, STRIDES, build_loss, make_batch
from test_head_losses import NUM_CLASSES, rcn_batch, rpn_records, sampled_proposals
from test_mixed_precision import float_tensors, map_tensors, realistic_batch, scaled

LOSSES = sorted(name for name, _ in KD_LOSS_REGISTRY)
LOSSES_ON_LEVELS = sorted(name for name, cls in KD_LOSS_REGISTRY if "IN_FEATURES" in cls.default_config())


class registered:
    """``with registered(cls):`` the loss class is in KD_LOSS_REGISTRY inside the block only."""

    def __init__(self, cls):
        self.cls = cls

    def __enter__(self):
        KD_LOSS_REGISTRY.register(self.cls)
        return self.cls

    def __exit__(self, *exc):
        KD_LOSS_REGISTRY._obj_map.pop(self.cls.__name__)


def loss_and_batch(name, student_channels=4, teacher_channels=6):
    """The loss ``name`` built on FPN shapes, and random records of what it reads (the student's
    requiring grad, the teacher's not): features with anchors and boxes, or RPN outputs, or sampled
    proposals."""
    loss = build_loss(name, student_channels, teacher_channels, "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES)
    if "features" in loss.needs:
        return loss, make_batch(student_channels, teacher_channels)
    batch = realistic_batch(loss)
    return loss, dataclasses.replace(batch, teacher=map_tensors(batch.teacher, torch.Tensor.detach))


def empty_batch(loss) -> DistillationBatch:
    """Records with nothing to distil: no ground-truth boxes; no foreground anchors; one background
    RoI per image, one image without boxes (no gt_boxes field)."""
    if "features" in loss.needs:
        return make_batch(boxes=())
    if "rpn" in loss.needs:
        student, anchors, sampled = rpn_records(num_images=1)
        no_foreground = type(sampled)([sampled.labels[0].clamp(max=0)], [torch.zeros_like(sampled.matched_gt_boxes[0])])
        return DistillationBatch(
            student={"rpn": student, "rpn_labels": no_foreground, "anchors": anchors},
            teacher={"rpn": rpn_records(num_images=1)[0]},
            gt_instances=[],
            image_sizes=[],
        )
    return rcn_batch(sampled_proposals([[3]], with_gt=False) + sampled_proposals([[3]]))


# ---- what a loss declares ------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_every_registered_loss_keeps_the_contract(name):
    cls = KD_LOSS_REGISTRY.get(name)
    assert issubclass(cls, DistillationLoss) and cls.needs and isinstance(cls.needs_teacher, bool)
    node = cls.default_config()
    assert load_config(STUDENT_CONFIG).KD[name.upper()] == node  # add_kddet_config adds it as the loss gives it


@pytest.mark.parametrize("name", LOSSES)
def test_one_name_spells_the_node_the_checkpoint_keys_and_the_metrics(name):
    loss, batch = loss_and_batch(name)
    cfg = load_config(STUDENT_CONFIG, "KD.LOSSES", [name])
    assert type(loss).config_node(cfg) is cfg.KD[name.upper()]
    shapes = {f: ShapeSpec(channels=4, stride=s) for f, s in zip(LEVELS, STRIDES)}
    built = build_kd_losses(cfg, shapes, shapes)
    assert list(built) == [name.lower()] and all(key.startswith(f"{name.lower()}.") for key in built.state_dict())
    torch.manual_seed(1)
    terms = loss(batch)
    assert all(key == f"loss_kd_{name.lower()}" or key.startswith(f"loss_kd_{name.lower()}_") for key in terms), terms


def test_a_loss_that_needs_an_unknown_record_kind_stops_at_build():
    class ReadsLogits(DistillationLoss):
        needs = ("features", "logits")

    with registered(ReadsLogits):
        cfg = load_config(STUDENT_CONFIG, "KD.LOSSES", ["ReadsLogits"])
        with pytest.raises(ValueError, match=r"ReadsLogits.needs names record kind\(s\) \['logits'\]") as error:
            kd_loss_classes(cfg)
    assert "'features', 'anchors', 'rpn'" in str(error.value)


def test_only_a_distillation_loss_can_be_registered():
    class Bare(nn.Module):
        needs = ("features",)

    with pytest.raises(TypeError, match="Bare does not subclass DistillationLoss"):
        KD_LOSS_REGISTRY.register(Bare)
    assert "Bare" not in KD_LOSS_REGISTRY


# ---- every registered loss -----------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_reach_the_student_and_every_adapter_and_not_the_teacher(name):
    loss, batch = loss_and_batch(name)
    torch.manual_seed(1)  # RKD draws the RoIs of its angle term
    terms = loss(batch)
    if "features" in loss.needs:
        assert len(terms) == 1
    for key, term in terms.items():
        assert term.dtype == torch.float32 and torch.isfinite(term), key
    sum(terms.values()).backward()
    assert not any(t.requires_grad for t in float_tensors(batch.teacher))
    if "features" in loss.needs:
        assert all(batch.student["features"][f].grad.abs().sum() > 0 for f in loss.in_features)
    else:
        leaves = [t for t in float_tensors(batch.student) if t.requires_grad]
        assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)
    parameters = dict(loss.named_parameters())
    assert all(p.grad is not None for p in parameters.values()), [n for n, p in parameters.items() if p.grad is None]
    if parameters:
        # A zero-initialised last layer (FGD's GcBlocks, FBKD's non-local blocks) starts its block as the
        # identity, so the layers before it get gradients from its first update on: check after one step.
        torch.optim.SGD(parameters.values(), lr=0.1).step()
        loss.zero_grad()
        torch.manual_seed(1)
        sum(loss(batch).values()).backward()
    for parameter_name, parameter in parameters.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", LOSSES)
def test_half_precision_records_give_a_float32_loss(name):
    loss, batch = loss_and_batch(name, 4, 4)
    torch.manual_seed(1)
    reference = loss(batch)
    torch.manual_seed(1)
    terms = loss(scaled(batch, 1.0, torch.float16))
    assert terms.keys() == reference.keys()
    for key, term in terms.items():
        assert term.dtype == torch.float32, key
        torch.testing.assert_close(term, reference[key].detach(), rtol=2e-2, atol=1e-3)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss(batch)
    for key, term in terms.items():
        assert term.dtype == torch.float32, key
        torch.testing.assert_close(term, reference[key].detach(), rtol=5e-2, atol=1e-2)


@pytest.mark.parametrize("name", LOSSES_ON_LEVELS)
def test_an_unknown_level_stops_naming_both_networks_levels(name):
    with pytest.raises(ValueError) as error:
        build_loss(name, 4, 6, f"KD.{name.upper()}.IN_FEATURES", ["p3", "p7"])
    message = str(error.value)
    assert "p7" in message and f"KD.{name.upper()}.IN_FEATURES" in message
    assert f"Student features: {LEVELS}" in message and f"teacher features: {LEVELS}" in message


@pytest.mark.parametrize("name", LOSSES)
def test_empty_input_gives_finite_terms_and_gradients(name):
    loss = build_loss(name, 4, 6, "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES)
    batch = empty_batch(loss)
    terms = loss(batch)
    for key, term in terms.items():
        assert torch.isfinite(term), key
    sum(terms.values()).backward()
    tensors = [t for t in float_tensors(batch.student) if t.requires_grad] + list(loss.parameters())
    assert all(t.grad is None or torch.isfinite(t.grad).all() for t in tensors)


# ---- a new loss is one file ----------------------------------------------------------------------


class ChannelMean(PerLevelFeatureLoss):
    """A throwaway feature loss, all in this file: the squared difference of the student's and the
    teacher's channel means, per level."""

    @classmethod
    def default_config(cls):
        node = super().default_config()
        node.WEIGHT = 0.5
        node.IN_FEATURES = ["p3", "p4"]
        return node

    def level_loss(self, level, student, teacher):
        return (student.float().mean(dim=1) - teacher.float().mean(dim=1)).pow(2).mean()


def test_a_loss_defined_in_one_file_trains_two_steps(teacher_weights, datasets_root, tmp_path):
    with registered(ChannelMean):
        cfg = load_config(
            STUDENT_CONFIG,
            "MODEL.META_ARCHITECTURE", "DistillationRCNN",
            "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights),
            "KD.LOSSES", ["ChannelMean"], "KD.CHANNELMEAN.WEIGHT", 2.0,
            "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
            "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path),
        )  # fmt: skip
        trainer = Trainer(cfg)
        assert trainer.model.kd_losses["channelmean"].weight == 2.0
        trainer.train()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 1 and math.isfinite(metrics[-1]["loss_kd_channelmean"])
    assert metrics[-1]["loss_kd_channelmean"] > 0
