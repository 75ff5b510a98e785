"""Feature-level losses against direct, slow computations of their formulas (docs/losses.md),
their edge cases, the FGFI imitation mask, and 2 training iterations of every shapes recipe."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

import kddet  # noqa: F401  (shims first; conftest ran kddet.setup())
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.structures import Boxes, Instances

from conftest import REPO, SHAPES_RECIPES, load_config
from kddet import add_kddet_config, model_zoo
from kddet.losses import KD_LOSS_REGISTRY, DistillationBatch, build_kd_losses
from kddet.losses.activation_boundaries import ab_loss
from kddet.losses.attention_transfer import at_loss
from kddet.losses.cwd import cwd_loss
from kddet.losses.fgfi import fgfi_loss, imitation_masks
from kddet.losses.fsp import fsp_loss
from kddet.losses.nst import nst_loss
from kddet.losses.ofd import NegativeMeanEstimate, ofd_loss
from kddet.losses.pkd import pkd_loss

LEVELS = ["p2", "p3", "p4", "p5", "p6"]
STRIDES = [4, 8, 16, 32, 64]


def assert_same_value_and_grads(fast, slow, inputs, rtol=1e-4, atol=1e-6):
    """Values and autograd gradients (w.r.t. ``inputs``) of two computations agree."""
    fast_value, slow_value = fast(*inputs), slow(*inputs)
    torch.testing.assert_close(fast_value, slow_value.to(fast_value.dtype), rtol=rtol, atol=atol)
    fast_grads = torch.autograd.grad(fast_value, inputs)
    slow_grads = torch.autograd.grad(slow_value, inputs)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def leaf(*shape):
    return torch.randn(*shape).requires_grad_()


# ---------------------------------------------------------------- slow reference computations


def slow_fgfi(students, teachers, masks):
    """1/(2 N_p) sum I (S - T)^2 over all levels, by loops."""
    total, imitated = 0.0, 0
    for student, teacher, mask in zip(students, teachers, masks):
        n, c, h, w = student.shape
        for i in range(n):
            for y in range(h):
                for x in range(w):
                    if mask[i, y, x]:
                        imitated += 1
                        for k in range(c):
                            total = total + (student[i, k, y, x] - teacher[i, k, y, x]) ** 2
    return total / (2 * imitated)


def slow_nst(student, teacher, kernel, degree=2, constant=0.0):
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    total = 0.0
    for t_map, s_map in zip(teacher, student):
        t = [f.flatten() / f.flatten().norm() for f in t_map]
        s = [f.flatten() / f.flatten().norm() for f in s_map]
        union = t + s
        if kernel == "gaussian":
            pairs = [((a - b) ** 2).sum() for i, a in enumerate(union) for j, b in enumerate(union) if i != j]
            sigma2 = (sum(pairs) / len(pairs)).detach()

        def k(a, b):
            if kernel == "linear":
                return (a * b).sum()
            if kernel == "polynomial":
                return ((a * b).sum() + constant) ** degree
            return torch.exp(-((a - b) ** 2).sum() / (2 * sigma2))

        mmd2 = (
            sum(k(a, b) for a in t for b in t) / len(t) ** 2
            + sum(k(a, b) for a in s for b in s) / len(s) ** 2
            - 2 * sum(k(a, b) for a in t for b in s) / (len(t) * len(s))
        )
        total = total + 0.5 * mmd2
    return total / len(teacher)


def slow_at(student, teacher, p=2.0):
    total = 0.0
    for s_map, t_map in zip(student, teacher):
        q_s = sum(s_map[k].abs() ** p for k in range(s_map.shape[0])).flatten()
        q_t = sum(t_map[k].abs() ** p for k in range(t_map.shape[0])).flatten()
        total = total + 0.5 * ((q_s / q_s.norm() - q_t / q_t.norm()) ** 2).sum()
    return total / len(student)


def slow_ofd(student, teacher, margin):
    terms = []
    for index in torch.cartesian_prod(*(torch.arange(d) for d in student.shape)).tolist():
        s, t = student[tuple(index)], max(teacher[tuple(index)].item(), margin[index[1]].item())
        terms.append(s * 0 if s.item() <= t <= 0 else (t - s) ** 2)
    return sum(terms) / len(terms)


def slow_ab(student, teacher, mu):
    terms = []
    for index in torch.cartesian_prod(*(torch.arange(d) for d in student.shape)).tolist():
        s, t = student[tuple(index)], teacher[tuple(index)].item()
        terms.append(F.relu(mu - s) ** 2 if t > 0 else F.relu(mu + s) ** 2)
    return sum(terms) / len(terms)


def slow_gram(fine, coarse):
    """G_ij = sum_{s,t} F1_sti F2_stj / (h w) for one image, the coarser map upsampled nearest."""
    (c1, h, w), (c2, h2, w2) = fine.shape, coarse.shape
    gram = torch.zeros(c1, c2)
    for y in range(h):
        for x in range(w):
            upsampled = coarse[:, y * h2 // h, x * w2 // w]
            gram = gram + fine[:, y, x][:, None] * upsampled[None, :]
    return gram / (h * w)


def slow_fsp(student_levels, teacher_levels):
    per_pair = []
    for k in range(len(student_levels) - 1):
        per_image = []
        for n in range(len(student_levels[k])):
            teacher_gram = slow_gram(teacher_levels[k][n], teacher_levels[k + 1][n])
            student_gram = slow_gram(student_levels[k][n], student_levels[k + 1][n])
            per_image.append(((teacher_gram - student_gram) ** 2).sum())
        per_pair.append(sum(per_image) / len(per_image))
    return sum(per_pair) / len(per_pair)


def slow_standardise(x):
    channels = []
    for k in range(x.shape[1]):
        values = x[:, k]
        mean = values.sum() / values.numel()
        std = (((values - mean) ** 2).sum() / values.numel()).sqrt()
        channels.append((values - mean) / (std + 1e-6))
    return torch.stack(channels, dim=1)


def slow_fitnet(student_adapted, teacher):
    """1/2 mean (T - r(S))^2, by loops."""
    total = 0.0
    for s, t in zip(student_adapted.flatten(), teacher.flatten()):
        total = total + (t - s) ** 2
    return 0.5 * total / student_adapted.numel()


def slow_pkd(student, teacher):
    return ((slow_standardise(student) - slow_standardise(teacher)) ** 2).sum() / student.numel()


def slow_cwd(student, teacher, tau):
    total, count = 0.0, 0
    for n in range(student.shape[0]):
        for k in range(student.shape[1]):
            s, t = student[n, k].flatten() / tau, teacher[n, k].flatten() / tau
            p_t = torch.exp(t) / torch.exp(t).sum()
            p_s = torch.exp(s) / torch.exp(s).sum()
            total = total + (p_t * (torch.log(p_t) - torch.log(p_s))).sum()
            count += 1
    return tau**2 * total / count


# ---------------------------------------------------------------- formulas


def test_fgfi_loss_matches_its_formula():
    student, teacher = leaf(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    mask = torch.rand(2, 4, 5) > 0.6
    assert_same_value_and_grads(
        lambda s: fgfi_loss([s], [teacher], [mask]), lambda s: slow_fgfi([s], [teacher], [mask]), [student]
    )


def test_fgfi_loss_normalises_by_all_levels_together():
    students = [leaf(1, 2, 4, 4), leaf(1, 2, 2, 2)]
    teachers = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    masks = [torch.rand(1, 4, 4) > 0.5, torch.ones(1, 2, 2, dtype=torch.bool)]
    assert_same_value_and_grads(
        lambda *s: fgfi_loss(s, teachers, masks), lambda *s: slow_fgfi(s, teachers, masks), students
    )


def test_fgfi_loss_with_an_empty_mask_is_zero_with_finite_grads():
    student = leaf(2, 3, 4, 4)
    loss = fgfi_loss([student], [torch.randn(2, 3, 4, 4)], [torch.zeros(2, 4, 4, dtype=torch.bool)])
    (grad,) = torch.autograd.grad(loss, student)
    assert loss.item() == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("kernel", ["linear", "polynomial", "gaussian"])
def test_nst_matches_its_formula_with_different_widths(kernel):
    student, teacher = leaf(2, 3, 4, 5), torch.randn(2, 4, 4, 5)
    assert_same_value_and_grads(
        lambda s: nst_loss(s, teacher, kernel), lambda s: slow_nst(s, teacher, kernel), [student]
    )


def test_nst_polynomial_constant_and_degree():
    student, teacher = leaf(1, 2, 3, 3), torch.randn(1, 3, 3, 3)
    assert_same_value_and_grads(
        lambda s: nst_loss(s, teacher, "polynomial", 3, 0.5),
        lambda s: slow_nst(s, teacher, "polynomial", 3, 0.5),
        [student],
    )


def test_nst_resizes_the_student_to_the_teacher():
    student, teacher = leaf(2, 3, 3, 4), torch.randn(2, 2, 6, 8)
    assert_same_value_and_grads(
        lambda s: nst_loss(s, teacher, "gaussian"), lambda s: slow_nst(s, teacher, "gaussian"), [student]
    )


def test_nst_is_zero_for_identical_maps():
    features = torch.randn(2, 4, 5, 5)
    assert nst_loss(features, features).abs().item() < 1e-6


def test_at_matches_its_formula():
    student, teacher = leaf(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    assert_same_value_and_grads(lambda s: at_loss(s, teacher), lambda s: slow_at(s, teacher), [student])
    assert_same_value_and_grads(lambda s: at_loss(s, teacher, 3.0), lambda s: slow_at(s, teacher, 3.0), [student])


def test_ofd_matches_its_formula():
    student, teacher = leaf(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    margin = -torch.rand(3)
    assert_same_value_and_grads(
        lambda s: ofd_loss(s, teacher, margin), lambda s: slow_ofd(s, teacher, margin), [student]
    )


def test_ofd_margin_is_a_running_mean_of_the_negatives():
    estimate = NegativeMeanEstimate(3, momentum=0.25)
    first, second = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    first[:, 2] = first[:, 2].abs()  # channel 2 has no negatives in the first batch

    def negative_mean(x, k):
        values = x[:, k].flatten()
        return values[values < 0].mean()

    estimate.update(first)
    torch.testing.assert_close(estimate.margin[:2], torch.stack([negative_mean(first, k) for k in range(2)]))
    assert estimate.margin[2].item() == 0
    estimate.update(second)
    expected = [0.75 * negative_mean(first, k) + 0.25 * negative_mean(second, k) for k in range(2)]
    torch.testing.assert_close(estimate.margin[:2], torch.stack(expected))
    torch.testing.assert_close(estimate.margin[2], negative_mean(second, 2))  # its first batch sets it


def _update_in_process(rank: int, init_file: str, shards: torch.Tensor, margins) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(shards))
    estimate = NegativeMeanEstimate(shards.shape[2], momentum=0.25)
    estimate.update(shards[rank])
    margins[rank] = estimate.margin
    torch.distributed.destroy_process_group()


def test_ofd_margins_are_those_of_the_whole_batch_across_processes(tmp_path):
    """Under DDP every process sees half the batch; each must still end with the margins of all of it."""
    shards = torch.randn(2, 2, 3, 4, 4)  # (process, image, channel, H, W)
    shards[0, :, 1] = shards[0, :, 1].abs()  # channel 1 is negative only in the second process's shard
    whole = NegativeMeanEstimate(3, momentum=0.25)
    whole.update(shards.flatten(0, 1))
    # Forked, not spawned: a spawned process would import this module, and so detectron2, first.
    with torch.multiprocessing.get_context("fork").Manager() as manager:
        margins = manager.dict()
        args = (str(tmp_path / "init"), shards, margins)
        torch.multiprocessing.start_processes(_update_in_process, args=args, nprocs=2, start_method="fork")
        for rank in range(2):
            torch.testing.assert_close(margins[rank], whole.margin)


def test_ab_matches_its_formula():
    student, teacher = leaf(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    assert_same_value_and_grads(lambda s: ab_loss(s, teacher, 0.5), lambda s: slow_ab(s, teacher, 0.5), [student])


def test_fsp_matches_its_formula_with_the_coarser_level_upsampled():
    students = [leaf(2, 3, 4, 6), leaf(2, 3, 2, 3), leaf(2, 3, 1, 2)]
    teachers = [torch.randn(2, 3, 4, 6), torch.randn(2, 3, 2, 3), torch.randn(2, 3, 1, 2)]
    assert_same_value_and_grads(
        lambda *s: fsp_loss(list(s), teachers), lambda *s: slow_fsp(list(s), teachers), students
    )


def test_pkd_matches_its_formula():
    student, teacher = leaf(2, 3, 3, 4), 5 * torch.randn(2, 3, 3, 4) + 2
    assert_same_value_and_grads(lambda s: pkd_loss(s, teacher), lambda s: slow_pkd(s, teacher), [student])


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_its_formula(tau):
    student, teacher = leaf(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    assert_same_value_and_grads(lambda s: cwd_loss(s, teacher, tau), lambda s: slow_cwd(s, teacher, tau), [student])


@pytest.mark.parametrize(
    "loss",
    [
        lambda s, t: nst_loss(s, t),
        lambda s, t: nst_loss(s, t, "gaussian"),
        lambda s, t: at_loss(s, t),
        lambda s, t: ofd_loss(s, t, torch.tensor([-0.5])),
        lambda s, t: ab_loss(s, t),
        lambda s, t: fsp_loss([s, s[..., ::2, ::2]], [t, t[..., ::2, ::2]]),
        lambda s, t: pkd_loss(s, t),
        lambda s, t: cwd_loss(s, t),
    ],
    ids=["nst", "nst-gaussian", "at", "ofd", "ab", "fsp", "pkd", "cwd"],
)
def test_one_channel_gives_a_finite_loss_and_grad(loss):
    student = leaf(2, 1, 4, 4)
    (grad,) = torch.autograd.grad(loss(student, torch.randn(2, 1, 4, 4)), student)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------- FGFI imitation masks


def level_anchors(size, stride, grid, offset=0.0):
    """Square anchors of one size, one per location, as detectron2 lays them out."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    centers = torch.stack([xs.flatten(), ys.flatten()], dim=1).float() + offset * stride
    return Boxes(torch.cat([centers - size / 2, centers + size / 2], dim=1))


def slow_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def slow_masks(gt_boxes, anchors, grid_sizes, image_size, psi, per_level):
    gt, anchors = gt_boxes.tensor.tolist(), [a.tensor.tolist() for a in anchors]
    ious = [[[slow_iou(box, anchor) for anchor in level] for level in anchors] for box in gt]  # box, level, anchor
    best = [[max(level) for level in box_ious] for box_ious in ious]
    if not per_level:
        best = [[max(box_best)] * len(anchors) for box_best in best]
    masks = []
    for level, (h, w) in enumerate(grid_sizes):
        per_location = len(anchors[level]) // (h * w)
        mask = torch.zeros(h, w, dtype=torch.bool)
        for y in range(h):
            for x in range(w):
                first = anchors[level][(y * w + x) * per_location]
                if (first[0] + first[2]) / 2 >= image_size[1] or (first[1] + first[3]) / 2 >= image_size[0]:
                    continue
                for box_ious, box_best in zip(ious, best):
                    location = box_ious[level][(y * w + x) * per_location : (y * w + x + 1) * per_location]
                    mask[y, x] |= any(iou > psi * box_best[level] for iou in location)
        masks.append(mask)
    return masks


def test_fgfi_mask_by_hand():
    # 16x16 padded image, 8 px anchors every 4 px and 16 px anchors every 8 px.
    anchors = [level_anchors(8, 4, (4, 4)), level_anchors(16, 8, (2, 2))]
    gt = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    # The anchor centred at (4, 4) covers the box exactly; its neighbours reach IoU 1/3 and the
    # 16 px anchors 1/4, both under 0.5 * 1.
    fine, coarse = imitation_masks(gt, anchors, [(4, 4), (2, 2)], (16, 16), psi=0.5)
    expected_fine = torch.zeros(4, 4, dtype=torch.bool)
    expected_fine[1, 1] = True
    assert torch.equal(fine, expected_fine) and not coarse.any()
    # Per level, the 16 px anchors' best IoU is 1/4: all four exceed 1/8.
    _, coarse = imitation_masks(gt, anchors, [(4, 4), (2, 2)], (16, 16), psi=0.5, max_iou_per_level=True)
    assert coarse.all()
    # An image 8 px high, padded to 16: the row of anchors centred at y = 8 lies on padding.
    _, coarse = imitation_masks(gt, anchors, [(4, 4), (2, 2)], (8, 16), psi=0.5, max_iou_per_level=True)
    assert torch.equal(coarse, torch.tensor([[True, True], [False, False]]))


@pytest.mark.parametrize("boxes_per_chunk", [32, 2])  # 2: the 5 boxes in chunks of 2, 2 and 1
@pytest.mark.parametrize("per_level", [False, True])
def test_fgfi_mask_matches_a_direct_computation(per_level, boxes_per_chunk):
    generator = torch.Generator().manual_seed(0)
    grid_sizes = [(8, 8), (4, 4), (2, 2)]
    anchors = [
        Boxes(torch.cat([level_anchors(size * ratio, stride, grid).tensor for ratio in (0.7, 1.4)], dim=1).view(-1, 4))
        for size, stride, grid in zip((8, 16, 32), (4, 8, 16), grid_sizes)
    ]
    corners = torch.rand(5, 2, generator=generator) * 24
    sizes = torch.rand(5, 2, generator=generator) * 20 + 2
    gt = Boxes(torch.cat([corners, corners + sizes], dim=1))
    fast = imitation_masks(
        gt, anchors, grid_sizes, (28, 20), psi=0.5, max_iou_per_level=per_level, boxes_per_chunk=boxes_per_chunk
    )
    slow = slow_masks(gt, anchors, grid_sizes, (28, 20), 0.5, per_level)
    for fast_mask, slow_mask in zip(fast, slow):
        assert torch.equal(fast_mask, slow_mask)
    assert any(mask.any() for mask in fast)


def test_fgfi_mask_without_boxes_is_empty():
    anchors = [level_anchors(8, 4, (4, 4))]
    (mask,) = imitation_masks(Boxes(torch.zeros(0, 4)), anchors, [(4, 4)], (16, 16))
    assert mask.shape == (4, 4) and not mask.any()


def test_visualize_imitation_mask_writes_a_panel_per_level(datasets_root, tmp_path):
    path = REPO / "tools/visualize_imitation_mask.py"
    spec = importlib.util.spec_from_file_location("visualize_imitation_mask", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = ["--config-file", str(REPO / "configs/shapes/fgfi.yaml"), "--num-images", "2", "--output", str(tmp_path)]
    paths = tool.main(tool.parse_args(args))
    assert [p.name for p in paths] == ["00000_fgfi_mask.png", "00001_fgfi_mask.png"]
    picture = tool.cv2.imread(str(paths[0]))
    assert picture.shape == (256, 5 * 256 + 4 * 4, 3)  # 128 px shapes images shown at twice their size


# ---------------------------------------------------------------- the registered losses


def loss_cfg(*opts):
    cfg = get_cfg()
    add_kddet_config(cfg)
    cfg.MODEL.RPN.IN_FEATURES = LEVELS
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.KD.FGFI.WARMUP_ITERS = 0
    cfg.merge_from_list(list(opts))
    return cfg


def shapes(channels):
    return {f: ShapeSpec(channels=channels, stride=s) for f, s in zip(LEVELS, STRIDES)}


def build_loss(name, student_channels=4, teacher_channels=6, *opts):
    return KD_LOSS_REGISTRY.get(name)(loss_cfg(*opts), shapes(student_channels), shapes(teacher_channels))


# One box on an anchor of each level, so that FGFI imitates on every level.
BOXES = (
    (4.0, 4.0, 12.0, 12.0),
    (8.0, 8.0, 24.0, 24.0),
    (16.0, 16.0, 48.0, 48.0),
    (32.0, 32.0, 96.0, 96.0),
    (0.0, 0.0, 128.0, 128.0),
)


def make_batch(student_channels=4, teacher_channels=6, boxes=BOXES, dtype=torch.float32):
    """Two 128x128 images (the second 96 px high) with random FPN features and the anchors of
    ``loss_cfg``'s generator; student features are leaves that require grad."""
    sizes = [(128 // s, 128 // s) for s in STRIDES]
    student = {f: torch.randn(2, student_channels, *hw, dtype=dtype).requires_grad_() for f, hw in zip(LEVELS, sizes)}
    teacher = {f: torch.randn(2, teacher_channels, *hw, dtype=dtype) for f, hw in zip(LEVELS, sizes)}
    generator = build_anchor_generator(loss_cfg(), [ShapeSpec(stride=s) for s in STRIDES])
    gt = []
    for image_size in [(128, 128), (96, 128)]:
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
        gt.append(instances)
    return DistillationBatch(
        student={"features": student, "anchors": generator([student[f] for f in LEVELS])},
        teacher={"features": teacher},
        gt_instances=gt,
        image_sizes=[(128, 128), (96, 128)],
    )


def test_fgfi_needs_levels_with_anchors():
    with pytest.raises(ValueError, match="MODEL.RPN.IN_FEATURES"):
        build_loss("FGFI", 4, 6, "MODEL.RPN.IN_FEATURES", ["p3", "p4"])


def test_fgfi_module_matches_the_slow_mask_and_loss():
    loss = build_loss("FGFI", 4, 6, "KD.FGFI.IN_FEATURES", ["p2", "p3"])
    # Boxes matched on p2, on p3 across the bottom edge of the 96 px image, and on p4 (so not
    # imitated on p2 or p3: the best IoU is taken across levels).
    batch = make_batch(boxes=((4.0, 4.0, 12.0, 12.0), (40.0, 88.0, 56.0, 104.0), (16.0, 16.0, 48.0, 48.0)))
    anchors = batch.student["anchors"]
    sizes = [tuple(batch.student["features"][f].shape[-2:]) for f in LEVELS]
    per_image = [
        slow_masks(x.gt_boxes, anchors, sizes, hw, 0.5, False) for x, hw in zip(batch.gt_instances, batch.image_sizes)
    ]
    masks = [torch.stack(level) for level in zip(*per_image)]
    assert masks[0].any() and masks[1][1].sum() < masks[1][0].sum()  # padding of the 96 px image is dropped
    adapted = [loss.adapters[f](batch.student["features"][f]) for f in ("p2", "p3")]
    teachers = [batch.teacher["features"][f] for f in ("p2", "p3")]
    torch.testing.assert_close(loss(batch)["loss_kd_fgfi"], 0.01 * slow_fgfi(adapted, teachers, masks[:2]))


@pytest.mark.parametrize("standardize, student_too", [(False, False), (True, False), (True, True)])
def test_fitnet_matches_its_formula_with_a_raw_or_standardised_target(standardize, student_too):
    loss = build_loss(
        "FitNet", 4, 6, "KD.FITNET.IN_FEATURES", ["p2", "p4"], "KD.FITNET.WEIGHT", 3.0,
        "KD.FITNET.STANDARDIZE_TARGET", standardize, "KD.FITNET.STANDARDIZE_STUDENT", student_too,
    )  # fmt: skip
    batch = make_batch()
    target = slow_standardise if standardize else (lambda t: t)
    student = slow_standardise if student_too else (lambda s: s)
    expected = (
        sum(
            slow_fitnet(student(loss.adapters[f](batch.student["features"][f])), target(batch.teacher["features"][f]))
            for f in ("p2", "p4")
        )
        / 2
    )
    torch.testing.assert_close(loss(batch)["loss_kd_fitnet"], 3.0 * expected)


@pytest.mark.parametrize("student_too", [False, True])
def test_fgfi_imitates_the_standardised_target_when_asked(student_too):
    loss = build_loss(
        "FGFI",
        4,
        6,
        "KD.FGFI.IN_FEATURES",
        ["p2", "p3"],
        "KD.FGFI.STANDARDIZE_TARGET",
        True,
        "KD.FGFI.STANDARDIZE_STUDENT",
        student_too,
    )
    batch = make_batch()
    masks = loss.masks(batch)
    adapted = [loss.adapters[f](batch.student["features"][f]) for f in ("p2", "p3")]
    if student_too:
        adapted = [slow_standardise(a) for a in adapted]
    targets = [slow_standardise(batch.teacher["features"][f]) for f in ("p2", "p3")]
    torch.testing.assert_close(loss(batch)["loss_kd_fgfi"], 0.01 * slow_fgfi(adapted, targets, masks))


def test_fgfi_full_map_imitates_every_location_with_the_same_normalisation():
    loss = build_loss("FGFI", 4, 6, "KD.FGFI.IN_FEATURES", ["p2", "p3"], "KD.FGFI.FULL_MAP", True)
    batch = make_batch(boxes=())  # no box: the imitation masks would be empty
    adapted = [loss.adapters[f](batch.student["features"][f]) for f in ("p2", "p3")]
    teachers = [batch.teacher["features"][f] for f in ("p2", "p3")]
    squared = sum((a - t).pow(2).sum() for a, t in zip(adapted, teachers))
    locations = sum(t.shape[0] * t.shape[2] * t.shape[3] for t in teachers)
    torch.testing.assert_close(loss(batch)["loss_kd_fgfi"], 0.01 * squared / (2 * locations))


def test_fgfi_without_boxes_is_zero_and_keeps_grads_finite():
    loss = build_loss("FGFI")
    batch = make_batch(boxes=())
    term = loss(batch)["loss_kd_fgfi"]
    term.backward()
    assert term.item() == 0
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())


@pytest.mark.parametrize("name", ["FGFI", "FitNet", "FGD"])
def test_warmup_zeroes_the_term_but_uses_the_adapters(name):
    loss = build_loss(name, 4, 6, f"KD.{name.upper()}.WARMUP_ITERS", 10)
    key = f"loss_kd_{name.lower()}"
    batch = make_batch()
    batch.iteration = 9
    term = loss(batch)[key]
    term.backward()
    assert term.item() == 0 and all(p.grad is not None for p in loss.parameters())
    batch.iteration = 10
    assert loss(batch)[key].item() > 0


@pytest.mark.parametrize("name, adapters", [("FGFI", "adapters"), ("FitNet", "adapters"), ("FGD", "aligns")])
def test_adapters_can_be_fitted_during_warmup_without_pulling_the_student(name, adapters):
    node, key = f"KD.{name.upper()}", f"loss_kd_{name.lower()}"
    loss = build_loss(name, 4, 6, f"{node}.WARMUP_ITERS", 10, f"{node}.FIT_ADAPTERS_IN_WARMUP", True)
    batch = make_batch()
    batch.iteration = 9
    term = loss(batch)[key]
    term.backward()
    # The full term, on detached student features: the adapters learn, the student is not pulled.
    plain = build_loss(name, 4, 6, f"{node}.WARMUP_ITERS", 0)
    plain.load_state_dict(loss.state_dict())
    assert term.item() == pytest.approx(plain(batch)[key].item()) and term.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(loss, adapters).parameters())
    assert all(batch.student["features"][f].grad is None for f in LEVELS)
    batch.iteration = 10
    loss(batch)[key].backward()
    assert all(batch.student["features"][f].grad.abs().sum() > 0 for f in loss.in_features)


def test_fitnet_hint_decays_linearly_to_zero_at_the_schedules_end():
    loss = build_loss(
        "FitNet", 4, 6, "KD.FITNET.WARMUP_ITERS", 10, "KD.FITNET.DECAY_TO_ZERO", True, "SOLVER.MAX_ITER", 110
    )
    constant = build_loss("FitNet", 4, 6)
    constant.load_state_dict(loss.state_dict())
    batch = make_batch()
    full = constant(batch)["loss_kd_fitnet"].item()
    for iteration, fraction in [(9, 0.0), (10, 1.0), (35, 0.75), (60, 0.5), (110, 0.0), (150, 0.0)]:
        batch.iteration = iteration
        assert loss(batch)["loss_kd_fitnet"].item() == pytest.approx(fraction * full), iteration


def test_ofd_margins_learn_only_in_training():
    loss = build_loss("OFD")
    batch = make_batch()
    loss.eval()
    loss(batch)
    assert all(m.margin.eq(0).all() for m in loss.margins.values())
    loss.train()
    loss(batch)
    assert all((m.margin < 0).all() for m in loss.margins.values())


def test_options_with_a_bad_value_stop_at_build_time():
    with pytest.raises(ValueError, match="KERNEL"):
        build_loss("NST", 4, 6, "KD.NST.KERNEL", "cosine")
    with pytest.raises(ValueError, match="two levels"):
        build_loss("FSP", 4, 6, "KD.FSP.IN_FEATURES", ["p2"])


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("recipe", SHAPES_RECIPES)
def test_recipe_trains_two_iterations(recipe, two_step_run):
    metrics, _ = two_step_run(recipe)
    assert metrics["iteration"] == 1
    # Finite terms named loss_kd_<name> (or loss_kd_<name>_<part>), one or more per loss.
    terms = {key: value for key, value in metrics.items() if key.startswith("loss_kd_")}
    names = {f"loss_kd_{name.lower()}" for name in load_config(REPO / f"configs/shapes/{recipe}.yaml").KD.LOSSES}
    owners = {key: [name for name in names if key == name or key.startswith(f"{name}_")] for key in terms}
    assert all(len(owner) == 1 for owner in owners.values()) and {o for (o,) in owners.values()} == names, terms
    assert all(map(math.isfinite, terms.values())), terms


def recipes_with_a_teacher(folder: str) -> list:
    configs = (load_config(path) for path in sorted((REPO / "configs" / folder).glob("*.yaml")))
    return [cfg for cfg in configs if cfg.KD.LOSSES and cfg.KD.TEACHER.CONFIG_FILE]


@pytest.mark.parametrize("folder", ["voc", "coco"])
def test_voc_and_coco_recipes_build_their_losses(folder):
    """Every recipe with a teacher loads, names a teacher config that exists, and its losses build
    on the two networks' FPN shapes (the R-101 teacher's and the R-18 or MobileNetV2 student's FPNs
    all give 256 channels)."""
    fpn = {f: ShapeSpec(channels=256, stride=s) for f, s in zip(LEVELS, STRIDES)}
    recipes = recipes_with_a_teacher(folder)
    assert len(recipes) >= 2
    for cfg in recipes:
        local = REPO / cfg.KD.TEACHER.CONFIG_FILE  # a file of the repository, or a model-zoo name
        teacher_file = local if local.is_file() else model_zoo.config_file(cfg.KD.TEACHER.CONFIG_FILE)
        assert teacher_file, cfg.KD.TEACHER.CONFIG_FILE
        teacher = load_config(teacher_file)
        assert teacher.MODEL.ROI_HEADS.NUM_CLASSES == cfg.MODEL.ROI_HEADS.NUM_CLASSES
        assert teacher.MODEL.RESNETS.DEPTH in (50, 101)
        if cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
            assert cfg.MODEL.RESNETS.DEPTH == 18
        assert set(build_kd_losses(cfg, fpn, fpn)) == {name.lower() for name in cfg.KD.LOSSES}
