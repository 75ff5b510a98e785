"""Head- and relation-level losses: each against a slow, literal computation of its formula
(values and gradients) and on edge cases; then inside DistillationRCNN, that the teacher scores
the student's own anchors and proposals row for row, and that two training steps run end to end."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import cat
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import smooth_l1_loss

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet import model_zoo
from kddet.capture import BoxPredictions, Recorder, RPNOutputs, SampledAnchors
from kddet.losses import (
    KD,
    PKT,
    RKD,
    SP,
    DistillationBatch,
    RCNBoundedReg,
    RCNSoftCls,
    RPNBoundedReg,
    RPNSoftCls,
    VirtualTeacher,
    kd_loss_classes,
    losses_need_teacher,
)
from kddet.losses.heads import gt_class_deltas, rcn_foreground, rpn_regression_targets, rpn_rows
from kddet.losses.kd import soft_target_kl
from kddet.losses.pkt import pkt_loss
from kddet.losses.rcn_bounded_reg import teacher_bounded_l2
from kddet.losses.soft_cls import weighted_soft_cross_entropy
from kddet.losses.rkd import rkd_angle_loss, rkd_distance_loss
from kddet.losses.rpn_soft_cls import objectness_as_two_classes
from kddet.losses.sp import sp_loss

HEAD_LOSSES = ["FitNet", "RPNSoftCls", "RCNSoftCls", "RPNBoundedReg", "RCNBoundedReg", "KD", "PKT", "SP", "RKD"]
NUM_CLASSES = 3
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def leaf(*shape, scale=1.0, dtype=torch.float64):
    return (scale * torch.randn(*shape, dtype=dtype)).requires_grad_()


def grads(value, inputs):
    return torch.autograd.grad(value, inputs, allow_unused=True)


def assert_same_value_and_grads(fast, slow, inputs, rtol=1e-5, atol=1e-7):
    """``fast`` and ``slow`` build the loss from ``inputs``; values and gradients must agree."""
    fast_value, slow_value = fast(*inputs), slow(*inputs)
    assert fast_value.dtype == torch.float32
    torch.testing.assert_close(fast_value.double(), slow_value.double(), rtol=rtol, atol=atol)
    for g_fast, g_slow in zip(grads(fast_value, inputs), grads(slow_value, inputs)):
        if g_fast is None or g_slow is None:  # an input neither computation reads
            assert g_fast is None and g_slow is None
            continue
        torch.testing.assert_close(g_fast.double(), g_slow.double(), rtol=1e-4, atol=1e-6)


def random_boxes(n, size=64.0):
    xy = torch.rand(n, 2) * size
    wh = 4 + torch.rand(n, 2) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


# ---- the formulas, written out one element at a time ---------------------------------------------


def slow_log_softmax(row, tau):
    scaled = [z / tau for z in row]
    log_norm = torch.log(sum(torch.exp(z) for z in scaled))
    return [z - log_norm for z in scaled]


def slow_weighted_soft_ce(student, teacher, weights, tau):
    rows = []
    for s_row, t_row in zip(student, teacher):
        p_t = [torch.exp(v) for v in slow_log_softmax(t_row, tau)]
        log_p_s = slow_log_softmax(s_row, tau)
        rows.append(-sum(weights[c] * p_t[c] * log_p_s[c] for c in range(len(weights))))
    return sum(rows) / len(rows)


def slow_kd(student, teacher_probs, tau):
    rows = [
        sum(p * (torch.log(p) - log_q) for p, log_q in zip(t_row, slow_log_softmax(s_row, tau)))
        for s_row, t_row in zip(student, teacher_probs)
    ]
    return tau**2 * sum(rows) / len(rows)


def slow_bounded_l2(student, teacher, target, margin):
    losses = []
    for s, t, y in zip(student, teacher, target):
        s_err = sum((s[k] - y[k]) ** 2 for k in range(4))
        t_err = sum((t[k] - y[k]) ** 2 for k in range(4))
        losses.append(s_err if s_err + margin > t_err else 0 * s_err)
    return torch.stack(losses)


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def slow_pkt(student, teacher):
    r = len(student)

    def conditional(f, i, j):
        kernel = lambda a, b: (cos(f[a], f[b]) + 1) / 2  # noqa: E731
        return kernel(i, j) / sum(kernel(k, j) for k in range(r) if k != j)

    total = 0.0
    for j in range(r):
        for i in range(r):
            if i != j:
                p, q = conditional(teacher, i, j), conditional(student, i, j)
                total = total + p * torch.log(p / q)
    return total / r


def slow_sp(student, teacher):
    b = len(student)

    def normalised_gram(f):
        g = [[(f[i] * f[j]).sum() for j in range(b)] for i in range(b)]
        return [[g[i][j] / torch.sqrt(sum(v**2 for v in g[i])) for j in range(b)] for i in range(b)]

    g_s, g_t = normalised_gram(student), normalised_gram(teacher)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def huber(x):
    return 0.5 * x**2 if abs(float(x.detach())) < 1 else abs(x) - 0.5


def slow_rkd_distance(student, teacher):
    r = len(student)
    pairs = [(i, j) for i in range(r) for j in range(r) if i != j]

    def psi(f):
        d = {(i, j): (f[i] - f[j]).norm() for i, j in pairs}
        mu = sum(d.values()) / len(d)
        return {k: v / mu for k, v in d.items()}

    p_s, p_t = psi(student), psi(teacher)
    return sum(huber(p_s[k] - p_t[k]) for k in pairs) / len(pairs)


def slow_rkd_angle(student, teacher):
    r = len(student)
    triplets = [(i, j, k) for i in range(r) for j in range(r) for k in range(r) if i != j and k != j]
    angle = lambda f, i, j, k: cos(f[i] - f[j], f[k] - f[j])  # noqa: E731
    terms = [huber(angle(student, i, j, k) - angle(teacher, i, j, k)) for i, j, k in triplets]
    return sum(terms) / len(terms)


# ---- formulas vs slow computations ---------------------------------------------------------------


def test_weighted_soft_cross_entropy_matches_its_formula():
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 1.0, 1.0, 1.5], dtype=torch.float64)
    inputs = [leaf(5, 4, scale=3), leaf(5, 4, scale=3)]
    assert_same_value_and_grads(
        lambda s, t: weighted_soft_cross_entropy(s, t, weights.float(), 2.0),
        lambda s, t: slow_weighted_soft_ce(s, t, weights, 2.0),
        inputs,
    )


def test_soft_target_kl_matches_its_formula_times_tau_squared():
    torch.manual_seed(1)
    student, teacher = leaf(6, 5, scale=2), torch.randn(6, 5, dtype=torch.float64)
    teacher_probs = F.softmax(teacher / 3.0, dim=1)
    assert_same_value_and_grads(
        lambda s: soft_target_kl(s, teacher_probs, 3.0), lambda s: slow_kd(s, teacher_probs, 3.0), [student]
    )


def test_teacher_bounded_l2_matches_its_formula():
    torch.manual_seed(2)
    teacher, target = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    assert_same_value_and_grads(
        lambda s: teacher_bounded_l2(s, teacher, target, 0.3).sum(),
        lambda s: slow_bounded_l2(s, teacher, target, 0.3).sum(),
        [leaf(7, 4)],
    )


def test_teacher_bounded_l2_gate():
    """Zero (and no gradient) where the student beats the teacher by more than m; else the L2 error."""
    target = torch.zeros(3, 4)
    teacher = torch.full((3, 4), 1.0)  # ||R_T - y||^2 = 4
    student = torch.stack([torch.full((4,), 0.5), torch.full((4,), 0.9), torch.full((4,), 2.0)]).requires_grad_()
    # student errors: 1 (beats the teacher by 3), 3.24 (by 0.76), 16 (worse)
    loss = teacher_bounded_l2(student, teacher, target, margin=1.0)
    torch.testing.assert_close(loss, torch.tensor([0.0, 3.24, 16.0]))
    (grad,) = torch.autograd.grad(loss.sum(), student)
    torch.testing.assert_close(grad, torch.stack([torch.zeros(4), torch.full((4,), 1.8), torch.full((4,), 4.0)]))
    assert teacher_bounded_l2(student, teacher, target, margin=3.5)[0] == 1.0  # a margin of 3.5 lets it through


@pytest.mark.parametrize(
    "fast, slow",
    [
        (pkt_loss, slow_pkt),
        (sp_loss, slow_sp),
        (rkd_distance_loss, slow_rkd_distance),
        (rkd_angle_loss, slow_rkd_angle),
    ],
    ids=["pkt", "sp", "rkd_distance", "rkd_angle"],
)
def test_relation_losses_match_their_formulas(fast, slow):
    torch.manual_seed(3)
    student, teacher = leaf(5, 6).detach().relu().requires_grad_(), leaf(5, 9).detach().relu().requires_grad_()
    assert_same_value_and_grads(fast, slow, [student, teacher])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_formulas_compute_in_float32_from_half_inputs(dtype):
    torch.manual_seed(4)
    a, b, c = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    weights = torch.tensor([1.0, 1.0, 1.0, 1.5])
    cases = [
        lambda x, y, z: weighted_soft_cross_entropy(x, y, weights, 2.0),
        lambda x, y, z: soft_target_kl(x, F.softmax(y.float(), 1), 2.0),
        lambda x, y, z: teacher_bounded_l2(x, y, z, 0.0).sum(),
        lambda x, y, z: pkt_loss(x, y),
        lambda x, y, z: sp_loss(x, y),
        lambda x, y, z: rkd_distance_loss(x, y),
        lambda x, y, z: rkd_angle_loss(x, y),
    ]
    for loss in cases:
        low = loss(a.to(dtype), b.to(dtype), c.to(dtype))
        assert low.dtype == torch.float32 and torch.isfinite(low)
        rounded = [t.to(dtype).float() for t in (a, b, c)]
        torch.testing.assert_close(low, loss(*rounded), rtol=1e-5, atol=1e-6)


# ---- the loss modules on hand-made records -------------------------------------------------------


def rpn_records(num_images=2, levels=((4, 4), (2, 2)), anchors_per_cell=3):
    """Raw rpn_head outputs per level, anchors in RPN order, and sampled labels, all random."""
    logits = [leaf(num_images, anchors_per_cell, h, w, dtype=torch.float32) for h, w in levels]
    deltas = [leaf(num_images, anchors_per_cell * 4, h, w, scale=0.5, dtype=torch.float32) for h, w in levels]
    anchors = [Boxes(random_boxes(h * w * anchors_per_cell)) for h, w in levels]
    total = sum(len(a) for a in anchors)
    labels = [torch.randint(-1, 2, (total,)) for _ in range(num_images)]
    matched = [random_boxes(total) for _ in range(num_images)]
    return RPNOutputs(logits, deltas), anchors, SampledAnchors(labels, matched)


def slow_rpn_row(rpn_outputs, image, row):
    """The logit and 4 deltas of anchor ``row``: levels in order, then y, x, then anchor."""
    logits, deltas = rpn_outputs
    for level_logits, level_deltas in zip(logits, deltas):
        a, h, w = level_logits.shape[1:]
        if row < a * h * w:
            y, x, k = row // (w * a), row // a % w, row % a
            return level_logits[image, k, y, x], level_deltas[image, 4 * k : 4 * k + 4, y, x]
        row -= a * h * w
    raise IndexError(row)


def test_rpn_rows_follow_the_anchor_order():
    torch.manual_seed(5)
    outputs, anchors, _ = rpn_records()
    logits, deltas = rpn_rows(outputs)
    for image in range(2):
        for row in range(sum(len(a) for a in anchors)):
            logit, delta = slow_rpn_row(outputs, image, row)
            assert logits[image, row] == logit and torch.equal(deltas[image, row], delta)


def test_rpn_soft_cls_on_the_sampled_anchors():
    torch.manual_seed(6)
    student, anchors, sampled = rpn_records()
    teacher, _, _ = rpn_records()
    batch = DistillationBatch(
        student={"rpn": student, "rpn_labels": sampled}, teacher={"rpn": teacher}, gt_instances=[], image_sizes=[]
    )
    loss = RPNSoftCls(mu=0.25, temperature=2.0, background_weight=1.5)
    assert loss.student_loss_scale == {"loss_rpn_cls": 0.25}

    def slow(*_):
        rows = [(image, row) for image in range(2) for row in range(len(sampled[0][0])) if sampled[0][image][row] >= 0]
        s = [slow_rpn_row(student, i, r)[0] for i, r in rows]
        t = [slow_rpn_row(teacher, i, r)[0].detach() for i, r in rows]
        two = lambda z: [z, torch.zeros_like(z)]  # noqa: E731  (sigmoid(z) = softmax(z, 0)[0])
        return 0.75 * slow_weighted_soft_ce([two(z) for z in s], [two(z) for z in t], [1.0, 1.5], 2.0)

    assert_same_value_and_grads(lambda *_: loss(batch)["loss_kd_rpnsoftcls"], slow, student[0] + student[1])


def test_rpn_soft_cls_two_columns_are_the_sigmoid():
    z = torch.randn(10)
    probs = F.softmax(objectness_as_two_classes(z) / 3.0, dim=1)
    torch.testing.assert_close(probs, torch.stack([torch.sigmoid(z / 3.0), 1 - torch.sigmoid(z / 3.0)], dim=1))


def test_rpn_bounded_reg_on_the_foreground_anchors():
    torch.manual_seed(7)
    student, anchors, (labels, matched) = rpn_records()
    teacher, _, _ = rpn_records()
    batch = DistillationBatch(
        student={"rpn": student, "rpn_labels": SampledAnchors(labels, matched), "anchors": anchors},
        teacher={"rpn": teacher},
        gt_instances=[],
        image_sizes=[],
    )
    transform = Box2BoxTransform(BOX_WEIGHTS)
    loss = RPNBoundedReg(weight=0.5, margin=0.1, box2box_transform=transform)
    all_anchors = Boxes.cat(anchors).tensor

    def slow(*_):
        terms, sampled = [], 0
        for image in range(2):
            for row in range(len(all_anchors)):
                sampled += int(labels[image][row] >= 0)
                if labels[image][row] == 1:
                    y = transform.get_deltas(all_anchors[row : row + 1], matched[image][row : row + 1])
                    s, t = slow_rpn_row(student, image, row)[1], slow_rpn_row(teacher, image, row)[1].detach()
                    terms.append(slow_bounded_l2(s[None], t[None], y, 0.1)[0])
        return 0.5 * sum(terms) / sampled

    assert_same_value_and_grads(lambda *_: loss(batch)["loss_kd_rpnboundedreg"], slow, student[1], atol=1e-6)


def sampled_proposals(gt_classes_per_image, with_gt=True):
    proposals = []
    for classes in gt_classes_per_image:
        p = Instances((64, 64), proposal_boxes=Boxes(random_boxes(len(classes))), gt_classes=torch.tensor(classes))
        if with_gt:
            p.gt_boxes = Boxes(random_boxes(len(classes)))
        proposals.append(p)
    return proposals


def rcn_batch(proposals, box_dim=4 * NUM_CLASSES, feature_dims=(6, 9)):
    """Random student (``box_dim`` deltas) and teacher (class-specific) records of ``proposals``."""
    rows = sum(len(p) for p in proposals)
    student = {
        "proposals": proposals,
        "predictions": BoxPredictions(
            leaf(rows, NUM_CLASSES + 1, dtype=torch.float32), leaf(rows, box_dim, dtype=torch.float32)
        ),
        "box_features": leaf(rows, feature_dims[0], dtype=torch.float32).detach().relu().requires_grad_(),
    }
    teacher = {
        "predictions": BoxPredictions(torch.randn(rows, NUM_CLASSES + 1), torch.randn(rows, 4 * NUM_CLASSES)),
        "box_features": torch.randn(rows, feature_dims[1]).relu(),
    }
    return DistillationBatch(student=student, teacher=teacher, gt_instances=[], image_sizes=[])


@pytest.mark.parametrize("student_box_dim", [4 * NUM_CLASSES, 4], ids=["class_specific", "class_agnostic"])
def test_rcn_bounded_reg_picks_the_gt_class_deltas(student_box_dim):
    torch.manual_seed(8)
    proposals = sampled_proposals([[0, 2, 3, 1, 3], [3, 1, 3]])  # 3 is background
    batch = rcn_batch(proposals, box_dim=student_box_dim)
    transform = Box2BoxTransform(BOX_WEIGHTS)
    loss = RCNBoundedReg(weight=0.5, margin=0.0, box2box_transform=transform, num_classes=NUM_CLASSES)
    student_deltas = batch.student["predictions"][1]
    teacher_deltas = batch.teacher["predictions"][1]

    def slow(*_):
        boxes = cat([p.proposal_boxes.tensor for p in proposals])
        gt_boxes = cat([p.gt_boxes.tensor for p in proposals])
        classes = cat([p.gt_classes for p in proposals])
        terms = []
        for row, c in enumerate(classes.tolist()):
            if c < NUM_CLASSES:
                s_cols = slice(0, 4) if student_box_dim == 4 else slice(4 * c, 4 * c + 4)
                y = transform.get_deltas(boxes[row : row + 1], gt_boxes[row : row + 1])
                s = student_deltas[row : row + 1, s_cols]
                t = teacher_deltas[row : row + 1, 4 * c : 4 * c + 4]
                terms.append(slow_bounded_l2(s, t, y, 0.0)[0])
        return 0.5 * sum(terms) / len(classes)

    assert_same_value_and_grads(lambda *_: loss(batch)["loss_kd_rcnboundedreg"], slow, [student_deltas], atol=1e-6)


def test_rcn_soft_cls_and_kd_on_the_sampled_proposals():
    torch.manual_seed(9)
    batch = rcn_batch(sampled_proposals([[0, 3, 3], [1]]))
    scores, teacher_scores = batch.student["predictions"][0], batch.teacher["predictions"][0]
    soft = RCNSoftCls(mu=0.5, temperature=2.0, background_weight=1.5)
    assert soft.student_loss_scale == {"loss_cls": 0.5}
    weights = [1.0] * NUM_CLASSES + [1.5]
    assert_same_value_and_grads(
        lambda s: soft(batch)["loss_kd_rcnsoftcls"],
        lambda s: 0.5 * slow_weighted_soft_ce(s, teacher_scores, weights, 2.0),
        [scores],
    )
    kd = KD(weight=0.7, temperature=4.0)
    assert_same_value_and_grads(
        lambda s: kd(batch)["loss_kd_kd"],
        lambda s: 0.7 * slow_kd(s, F.softmax(teacher_scores / 4.0, dim=1), 4.0),
        [scores],
    )


def test_virtual_teacher_uses_the_labels_only():
    torch.manual_seed(10)
    proposals = sampled_proposals([[0, 3, 2], [3, 1]])
    batch = rcn_batch(proposals)
    batch.teacher = {}
    scores = batch.student["predictions"][0]
    loss = VirtualTeacher(weight=1.0, temperature=2.0, correct_prob=0.9)
    assert VirtualTeacher.needs_teacher is False

    def slow(s):
        labels = cat([p.gt_classes for p in proposals]).tolist()
        probs = [[0.9 if c == label else 0.1 / NUM_CLASSES for c in range(NUM_CLASSES + 1)] for label in labels]
        return slow_kd(s, torch.tensor(probs, dtype=torch.float64), 2.0)

    assert_same_value_and_grads(lambda s: loss(batch)["loss_kd_virtualteacher"], slow, [scores])


@pytest.mark.parametrize(
    "module, fast, key",
    [
        (PKT(weight=2.0), pkt_loss, "loss_kd_pkt"),
        (SP(weight=2.0), sp_loss, "loss_kd_sp"),
        (RKD(distance_weight=2.0, angle_weight=1.0, angle_max_rois=128), rkd_distance_loss, "loss_kd_rkd_distance"),
        (RKD(distance_weight=1.0, angle_weight=2.0, angle_max_rois=128), rkd_angle_loss, "loss_kd_rkd_angle"),
    ],
    ids=["pkt", "sp", "rkd_distance", "rkd_angle"],
)
def test_relation_losses_average_over_images_and_skip_single_rois(module, fast, key):
    torch.manual_seed(11)
    proposals = sampled_proposals([[0, 1, 3, 3], [2], [3, 0, 1]])  # the middle image has one RoI
    batch = rcn_batch(proposals)
    s, t = batch.student["box_features"], batch.teacher["box_features"]
    expected = 2.0 * (fast(s[:4], t[:4]) + fast(s[5:], t[5:])) / 2
    torch.testing.assert_close(module(batch)[key], expected)


def test_rkd_angle_subsample_keeps_student_and_teacher_rows_paired():
    torch.manual_seed(12)
    batch = rcn_batch(sampled_proposals([[0, 1, 3, 3, 2, 1]]))
    batch.teacher["box_features"] = batch.student["box_features"].detach() * 3.0  # same angles
    loss = RKD(distance_weight=1.0, angle_weight=1.0, angle_max_rois=3)(batch)
    assert loss["loss_kd_rkd_angle"].abs() < 1e-6 and loss["loss_kd_rkd_distance"].abs() < 1e-6


def test_edge_cases_are_finite_zeros_that_still_backpropagate():
    """No foreground proposals, an image without boxes (no gt_boxes field) and single RoIs."""
    torch.manual_seed(13)
    proposals = sampled_proposals([[3]], with_gt=False) + sampled_proposals([[3]])
    batch = rcn_batch(proposals)
    outputs = {}
    for loss in (
        RCNBoundedReg(weight=0.5, margin=0.0, box2box_transform=Box2BoxTransform(BOX_WEIGHTS), num_classes=NUM_CLASSES),
        PKT(weight=1.0),
        SP(weight=1.0),
        RKD(distance_weight=1.0, angle_weight=1.0, angle_max_rois=128),
    ):
        outputs.update(loss(batch))
    for loss in (RCNSoftCls(mu=0.5, temperature=1.0, background_weight=1.5), KD(weight=1.0, temperature=2.0)):
        outputs.update(loss(batch))
    outputs.update(VirtualTeacher(weight=1.0, temperature=1.0, correct_prob=0.9)(batch))
    for name, value in outputs.items():
        assert torch.isfinite(value), name
    for name in ("loss_kd_rcnboundedreg", "loss_kd_pkt", "loss_kd_sp", "loss_kd_rkd_distance", "loss_kd_rkd_angle"):
        assert outputs[name] == 0, name
    sum(outputs.values()).backward()
    assert torch.isfinite(batch.student["predictions"][0].grad).all()

    # An RPN batch whose image has no boxes: no foreground anchors, every sampled anchor background.
    student, anchors, (labels, matched) = rpn_records(num_images=1)
    labels = [labels[0].clamp(max=0)]
    rpn_batch = DistillationBatch(
        student={
            "rpn": student,
            "rpn_labels": SampledAnchors(labels, [torch.zeros_like(matched[0])]),
            "anchors": anchors,
        },
        teacher={"rpn": rpn_records(num_images=1)[0]},
        gt_instances=[],
        image_sizes=[],
    )
    bounded = RPNBoundedReg(weight=0.5, margin=0.0, box2box_transform=Box2BoxTransform(BOX_WEIGHTS))(rpn_batch)
    soft = RPNSoftCls(mu=0.5, temperature=1.0, background_weight=1.5)(rpn_batch)
    assert bounded["loss_kd_rpnboundedreg"] == 0 and torch.isfinite(soft["loss_kd_rpnsoftcls"])
    (bounded["loss_kd_rpnboundedreg"] + soft["loss_kd_rpnsoftcls"]).backward()


# ---- inside DistillationRCNN ---------------------------------------------------------------------


def distillation_cfg(teacher_weights, *opts, teacher_config=TEACHER_CONFIG, losses=HEAD_LOSSES):
    return load_config(
        STUDENT_CONFIG,
        "MODEL.META_ARCHITECTURE",
        "DistillationRCNN",
        "KD.TEACHER.CONFIG_FILE",
        str(teacher_config),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
        "KD.LOSSES",
        list(losses),
        *opts,
    )


@pytest.fixture(scope="module")
def one_step(teacher_weights, datasets_root):
    """One training forward of a DistillationRCNN with every head and relation loss, the
    DistillationBatch its losses saw, and the mapped inputs."""
    # The untrained teacher regresses far worse than the student; a wide margin keeps the
    # bounded terms on, so that their gradients can be checked.
    cfg = distillation_cfg(teacher_weights, "KD.RPNBOUNDEDREG.MARGIN", 1e4, "KD.RCNBOUNDEDREG.MARGIN", 1e4)
    torch.manual_seed(0)
    np.random.seed(0)  # the mapper's random flips
    model = build_model(cfg)
    model.train()
    mapper = DatasetMapper(cfg, is_train=True)
    inputs = [mapper(d) for d in DatasetCatalog.get("kddet_shapes_train")[:2]]
    seen = {}
    soft_cls = model.kd_losses["rcnsoftcls"]
    forward = soft_cls.forward

    def recording_forward(batch):
        seen["batch"] = batch
        return forward(batch)

    soft_cls.forward = recording_forward
    with EventStorage(0):
        losses = model(inputs)
    return cfg, model, inputs, seen["batch"], losses


def test_teacher_box_head_scores_the_students_proposals_as_if_given_them(one_step):
    _, model, inputs, batch, _ = one_step
    teacher = model.teacher
    with torch.no_grad():
        images = teacher.preprocess_image(inputs)  # the teacher's own path, not the meta-arch's
        features = teacher.backbone(images.tensor)
        given = [Instances(p.image_size, proposal_boxes=p.proposal_boxes) for p in batch.student["proposals"]]
        sources = {"box_features": "roi_heads.box_head", "predictions": "roi_heads.box_predictor"}
        with Recorder(teacher, sources) as recorder:
            teacher.roi_heads(images, features, given)
    assert len(batch.teacher["box_features"]) == sum(len(p) for p in given) == len(batch.student["box_features"])
    torch.testing.assert_close(batch.teacher["box_features"], recorder.records["box_features"], rtol=0, atol=1e-6)
    for ours, direct in zip(batch.teacher["predictions"], recorder.records["predictions"]):
        torch.testing.assert_close(ours, direct, rtol=0, atol=1e-6)

    # The teacher's RPN ran on the same anchors as the student's, level by level.
    rpn_features = [features[f] for f in teacher.proposal_generator.in_features]
    teacher_anchors = teacher.proposal_generator.anchor_generator(rpn_features)
    for student_level, teacher_level in zip(batch.student["anchors"], teacher_anchors):
        assert torch.equal(student_level.tensor, teacher_level.tensor)
    for ours, direct in zip(batch.teacher["rpn"], teacher.proposal_generator.rpn_head(rpn_features)):
        for a, b in zip(ours, direct):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rows_are_the_ones_detectron2s_own_losses_use(one_step):
    """Rebuilding detectron2's RPN and RoI-head losses from the rows our losses read gives its
    values: same anchors, same order, same sampled proposals, same gt-class deltas, same targets.
    The classification terms carry mu (0.5) through ``student_loss_scale``."""
    cfg, model, inputs, batch, losses = one_step
    rpn, predictor = model.proposal_generator, model.roi_heads.box_predictor
    logits, deltas = rpn_rows(batch.student["rpn"])
    labels, matched = batch.student["rpn_labels"]
    labels = torch.stack(labels)
    normalizer = rpn.batch_size_per_image * len(inputs)
    sampled, fg = labels >= 0, labels == 1
    bce = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled].float(), reduction="sum") / normalizer
    torch.testing.assert_close(losses["loss_rpn_cls"], 0.5 * bce)
    targets = rpn_regression_targets(batch.student["anchors"], matched, rpn.box2box_transform)
    l1 = smooth_l1_loss(deltas[fg], targets[fg], rpn.smooth_l1_beta, reduction="sum") / normalizer
    torch.testing.assert_close(losses["loss_rpn_loc"], l1)

    proposals = batch.student["proposals"]
    scores, box_deltas = batch.student["predictions"]
    classes = cat([p.gt_classes for p in proposals])
    torch.testing.assert_close(losses["loss_cls"], 0.5 * F.cross_entropy(scores, classes))
    fg_rows, fg_classes, roi_targets = rcn_foreground(proposals, predictor.box2box_transform, predictor.num_classes)
    assert len(fg_rows) > 0
    fg_deltas = gt_class_deltas(box_deltas, fg_rows, fg_classes)
    reg = smooth_l1_loss(fg_deltas, roi_targets, predictor.smooth_l1_beta, reduction="sum")
    torch.testing.assert_close(losses["loss_box_reg"], reg / len(classes))


def test_every_kd_term_reaches_the_student_and_nothing_reaches_the_teacher(one_step):
    _, model, _, _, losses = one_step
    kd_terms = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert set(kd_terms) == {
        "loss_kd_fitnet",
        "loss_kd_rpnsoftcls",
        "loss_kd_rcnsoftcls",
        "loss_kd_rpnboundedreg",
        "loss_kd_rcnboundedreg",
        "loss_kd_kd",
        "loss_kd_pkt",
        "loss_kd_sp",
        "loss_kd_rkd_distance",
        "loss_kd_rkd_angle",
    }
    params = [p for p in model.parameters() if p.requires_grad]
    for name, value in kd_terms.items():
        assert torch.isfinite(value) and value > 0, name
        reached = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in reached), f"{name} does not reach the student"
    sum(losses.values()).backward()
    adapters = list(model.kd_losses["fitnet"].parameters())
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_anchor_mismatch_stops_at_build_with_both_settings(teacher_weights, tmp_path):
    teacher_config = tmp_path / "teacher_other_anchors.yaml"
    teacher_config.write_text(
        f'_BASE_: "{TEACHER_CONFIG}"\nMODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[16], [32], [64], [128], [256]]\n'
    )
    cfg = distillation_cfg(teacher_weights, teacher_config=teacher_config, losses=["RPNSoftCls"])
    with pytest.raises(ValueError, match="anchors differ") as error:
        build_model(cfg)
    message = str(error.value)
    assert "student: {'MODEL.RPN.IN_FEATURES'" in message and "teacher: {'MODEL.RPN.IN_FEATURES'" in message
    assert "'MODEL.ANCHOR_GENERATOR.SIZES': [[8.0], [16.0], [32.0], [64.0], [128.0]]" in message
    assert "'MODEL.ANCHOR_GENERATOR.SIZES': [[16.0], [32.0], [64.0], [128.0], [256.0]]" in message
    assert "'MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS': [[0.25, 0.5, 1.0, 2.0, 4.0]" in message
    # Losses that do not read the RPN do not care about anchors.
    build_model(distillation_cfg(teacher_weights, teacher_config=teacher_config, losses=["RCNSoftCls"]))


RECIPE_CONFIGS = sorted(
    str(path.relative_to(REPO))
    for path in REPO.glob("configs/**/*.yaml")
    if path.stem != "Base-Distill" and load_config(path).MODEL.META_ARCHITECTURE == "DistillationRCNN"
)


@pytest.mark.parametrize("config", RECIPE_CONFIGS)
def test_recipe_configs_load_and_name_registered_losses(config):
    cfg = load_config(REPO / config)
    assert cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN" and kd_loss_classes(cfg)
    if losses_need_teacher(cfg):  # a file of the repository, or a model-zoo name
        name = cfg.KD.TEACHER.CONFIG_FILE
        assert (REPO / name).is_file() or model_zoo.config_file(name), name


def test_virtual_teacher_alone_builds_no_teacher(datasets_root):
    cfg = load_config(REPO / "configs/shapes/virtual_teacher.yaml")
    assert cfg.KD.TEACHER.CONFIG_FILE == "" and not losses_need_teacher(cfg)
    assert build_model(cfg).teacher is None


# ---- two training steps (conftest's two_step_run) -----------------------------------------------


def test_chen2017_recipe_trains_two_steps(two_step_run):
    metrics, _ = two_step_run("chen2017")
    for name in ("fitnet", "rpnsoftcls", "rcnsoftcls", "rpnboundedreg", "rcnboundedreg"):
        assert math.isfinite(metrics[f"loss_kd_{name}"]), name
    assert metrics["loss_kd_rpnsoftcls"] > 0 and metrics["loss_kd_rcnsoftcls"] > 0


def test_virtual_teacher_recipe_trains_without_a_teacher(two_step_run):
    metrics, _ = two_step_run("virtual_teacher")
    assert math.isfinite(metrics["loss_kd_virtualteacher"]) and metrics["loss_kd_virtualteacher"] > 0
