"""ReviewKD, DKD, FGD, MGD and FBKD against their authors' code.

Each fixture in tests/fixtures/<loss>_authors.json holds what the authors' implementation gave
on fixed random inputs (its repository, commit, file and function; the seed; the inputs and the
trained modules' parameters; the loss and its gradient with respect to the student's input). Each
test loads the same inputs and parameters into kddet's loss and compares. The parameter names are
mapped from the authors' modules to kddet's by the ``RENAMES`` of each test.
"""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from detectron2.structures import Boxes, Instances

from kddet.capture import BoxPredictions
from kddet.losses import DistillationBatch
from kddet.losses.dkd import dkd_loss
from kddet.losses.fgd import focal_masks
from kddet.losses.pkd import standardise_channels
from test_feature_losses import build_loss, make_batch

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name):
    return json.loads((FIXTURES / f"{name}_authors.json").read_text())


def tensor(record, requires_grad=False):
    return torch.tensor(record["values"], dtype=torch.float32).view(record["shape"]).requires_grad_(requires_grad)


def level_batch(data, boxes=(), image_size=(64, 64)):
    """The fixture's per-level maps as records (the student's requiring grad), two images with ``boxes``."""
    gt = []
    for image_boxes in boxes or [[]] * 2:
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(torch.tensor(image_boxes, dtype=torch.float32).view(-1, 4))
        gt.append(instances)
    return DistillationBatch(
        student={"features": {f: tensor(r, requires_grad=True) for f, r in data["inputs"]["student"].items()}},
        teacher={"features": {f: tensor(r) for f, r in data["inputs"]["teacher"].items()}},
        gt_instances=gt,
        image_sizes=[image_size] * 2,
    )


def flatten(parameters, prefix=""):
    """``{"p3": {"align.weight": record}}`` -> ``{"p3/align.weight": record}``."""
    if "shape" in parameters:
        return {prefix: parameters}
    return {
        k: v for key, sub in parameters.items() for k, v in flatten(sub, f"{prefix}/{key}" if prefix else key).items()
    }


def load_authors_parameters(loss, parameters, renames):
    """Copy the authors' parameters into ``loss``, each name rewritten by the (pattern, replacement)
    pairs in turn; every parameter of ``loss`` must receive one, and every one must be used."""
    state = {}
    for name, record in flatten(parameters).items():
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor(record)
    own = dict(loss.named_parameters())
    assert sorted(state) == sorted(own)
    with torch.no_grad():
        for name, parameter in own.items():
            parameter.copy_(state[name])


def assert_matches_authors(data, value, student_inputs, rtol=1e-5):
    """The loss value and its gradient w.r.t. each student input agree with the fixture's, the
    gradient to ``rtol`` of its largest entry."""
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.detach(), torch.tensor(data["loss"]), rtol=rtol, atol=0)
    grads = torch.autograd.grad(value, list(student_inputs.values()))
    for name, grad in zip(student_inputs, grads):
        expected = tensor(data["grad"][name])
        scale = expected.abs().max().item()
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def test_fixtures_say_where_they_come_from():
    for path in sorted(FIXTURES.glob("*_authors.json")):
        data = json.loads(path.read_text())
        assert {"repository", "commit", "file", "function"} <= set(data["provenance"]), path.name
        assert re.fullmatch(r"[0-9a-f]{40}", data["provenance"]["commit"]) and isinstance(data["seed"], int)
        assert path.stat().st_size < 100_000


def test_dkd_matches_mdistiller():
    data = fixture("dkd")
    settings = data["settings"]
    student = tensor(data["inputs"]["student_logits"], requires_grad=True)
    teacher = tensor(data["inputs"]["teacher_logits"])
    targets = torch.tensor(data["inputs"]["gt_classes"])
    value = dkd_loss(student, teacher, targets, settings["alpha"], settings["beta"], settings["temperature"])
    assert_matches_authors(data, value, {"student_logits": student})

    # The registered loss reads the same rows: the sampled proposals' logits and gt_classes.
    loss = build_loss(
        "DKD", 4, 6, "KD.DKD.ALPHA", settings["alpha"], "KD.DKD.BETA", settings["beta"],
        "KD.DKD.TEMPERATURE", settings["temperature"],
    )  # fmt: skip
    proposals = []
    for classes in targets.split([7, 5]):
        proposals.append(Instances((64, 64), proposal_boxes=Boxes(torch.zeros(len(classes), 4)), gt_classes=classes))
    deltas = torch.zeros(len(targets), 16)
    batch = DistillationBatch(
        student={"proposals": proposals, "predictions": BoxPredictions(student, deltas)},
        teacher={"predictions": BoxPredictions(teacher, deltas)},
        gt_instances=[],
        image_sizes=[],
    )
    assert_matches_authors(data, loss(batch)["loss_kd_dkd"], {"student_logits": student})


def test_dkd_decouples_hintons_kd():
    # KD = TCKD + (1 - p_gt of the teacher) * NCKD (Zhao et al., eq. 7): DKD with that beta is Hinton's KD, row by row.
    generator = torch.Generator().manual_seed(0)
    student, teacher = (torch.randn(6, 5, generator=generator) for _ in range(2))
    targets = torch.randint(0, 5, (6,), generator=generator)
    for row in range(6):
        s, t, target = student[row : row + 1], teacher[row : row + 1], targets[row : row + 1]
        for tau in (1.0, 3.0):
            beta = 1.0 - (t / tau).softmax(dim=1)[0, target].item()
            kl = tau**2 * ((t / tau).softmax(1) * ((t / tau).log_softmax(1) - (s / tau).log_softmax(1))).sum()
            # rtol 1e-4: the two sides sum the same KL in different orders, which float32 rounds apart by ~1e-5.
            torch.testing.assert_close(dkd_loss(s, t, target, 1.0, beta, tau), kl, rtol=1e-4, atol=1e-6)


MGD_RENAMES = [(r"^(p\d)/align\.", r"aligns.\1."), (r"^(p\d)/generation\.", r"generators.\1.")]


def test_mgd_matches_the_authors_code():
    data = fixture("mgd")
    settings = data["settings"]
    loss = build_loss(
        "MGD", 4, 6, "KD.MGD.IN_FEATURES", ["p3", "p4"], "KD.MGD.WEIGHT", settings["alpha_mgd"],
        "KD.MGD.MASK_RATIO", settings["lambda_mgd"],
    )  # fmt: skip
    load_authors_parameters(loss, data["parameters"], MGD_RENAMES)
    batch = level_batch(data)
    torch.manual_seed(data["seed"])  # the masks, drawn in level order as the authors' losses are called
    assert_matches_authors(data, loss(batch)["loss_kd_mgd"], batch.student["features"])


FGD_RENAMES = [
    (r"^(p\d)/align\.", r"aligns.\1."),
    (r"^(p\d)/conv_mask_s\.", r"student_context.\1.context_mask."),
    (r"^(p\d)/conv_mask_t\.", r"teacher_context.\1.context_mask."),
    (r"^(p\d)/channel_add_conv_s\.", r"student_context.\1.transform."),
    (r"^(p\d)/channel_add_conv_t\.", r"teacher_context.\1.transform."),
]


def test_fgd_matches_the_authors_code():
    data = fixture("fgd")
    settings = data["settings"]
    loss = build_loss(
        "FGD", 4, 6, "KD.FGD.IN_FEATURES", ["p3", "p4"], "KD.FGD.TEMPERATURE", settings["temp"],
        "KD.FGD.ALPHA", settings["alpha_fgd"], "KD.FGD.BETA", settings["beta_fgd"],
        "KD.FGD.GAMMA", settings["gamma_fgd"], "KD.FGD.LAMBDA", settings["lambda_fgd"],
    )  # fmt: skip
    assert loss.strides == data["strides"]
    load_authors_parameters(loss, data["parameters"], FGD_RENAMES)
    # The authors' image_shape is the padded size here, where their box scaling is 1 / stride, as kddet's always is.
    batch = level_batch(data, boxes=data["inputs"]["gt_boxes"], image_size=tuple(data["image_size"]))
    assert_matches_authors(data, loss(batch)["loss_kd_fgd"], batch.student["features"])


def test_fgd_standardised_is_fgd_on_standardised_maps_and_ignores_the_students_scale():
    standardised = build_loss("FGD", 6, 6, "KD.FGD.STANDARDIZE", True)
    plain = build_loss("FGD", 6, 6)
    plain.load_state_dict(standardised.state_dict())
    batch = make_batch(6, 6)

    def with_features(student, teacher):
        return dataclasses.replace(batch, student={**batch.student, "features": student}, teacher={"features": teacher})

    student, teacher = batch.student["features"], batch.teacher["features"]
    expected = plain(with_features(*({f: standardise_channels(x[f]) for f in x} for x in (student, teacher))))
    torch.testing.assert_close(standardised(batch)["loss_kd_fgd"], expected["loss_kd_fgd"])
    rescaled = with_features({f: 3 * x + 1 for f, x in student.items()}, teacher)
    torch.testing.assert_close(standardised(rescaled)["loss_kd_fgd"], standardised(batch)["loss_kd_fgd"])
    assert not torch.allclose(plain(rescaled)["loss_kd_fgd"], plain(batch)["loss_kd_fgd"])


def test_fgd_lays_boxes_by_the_stride_whatever_the_padding():
    # The authors scale a box by (map width / unpadded image width): on a 48 px wide image padded to 64 px,
    # x = 24..40 would land on cells floor(24 / 48 * 8) = 4 .. ceil(40 / 48 * 8) = 7, past the object.
    # kddet lays it at 24 / 8 = 3 .. 40 / 8 = 5 on the padded map, where the features of the object are.
    foreground, background = focal_masks(Boxes(torch.tensor([[24.0, 8.0, 40.0, 16.0]])), stride=8, grid_size=(8, 8))
    rows, columns = foreground.nonzero().unbind(1)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (1, 2, 3, 5)
    torch.testing.assert_close(foreground[1, 3], torch.tensor(1.0 / 6))  # 1 / (2 rows x 3 columns)
    torch.testing.assert_close(background.sum(), torch.tensor(1.0))


REVIEWKD_LEVELS = ["p2", "p3", "p4"]
REVIEWKD_RENAMES = [
    # the authors' abfs run deepest first: abfs.0 is the last level's
    *[(rf"^abfs\.{i}\.", f"fusions.{level}.") for i, level in enumerate(reversed(REVIEWKD_LEVELS))],
    (r"\.conv1\.", ".project."),
    (r"\.conv2\.", ".output."),
    (r"\.att_conv\.0\.", ".attention."),
]


def test_reviewkd_matches_the_authors_code():
    data = fixture("reviewkd")
    loss = build_loss(
        "ReviewKD", 4, 6, "KD.REVIEWKD.IN_FEATURES", REVIEWKD_LEVELS,
        "KD.REVIEWKD.MID_CHANNELS", data["settings"]["mid_channels"],
    )  # fmt: skip
    load_authors_parameters(loss, data["parameters"], REVIEWKD_RENAMES)
    loss.train()  # BatchNorm on the batch's statistics, as the fixture was made
    batch = level_batch(data)
    assert_matches_authors(data, loss(batch)["loss_kd_reviewkd"], batch.student["features"])


FBKD_RENAMES = [
    (r"^(p\d)/(student|teacher)/", r"levels.\1."),
    (r"\.channel_wise_adaptation\.", ".channel_adaptation."),
    (r"\.spatial_wise_adaptation\.", ".spatial_adaptation."),
    (r"\.adaptation_layers\.", ".feature_adaptation."),
    (r"_non_local\.(g|phi)\.0\.0\.conv\.", r"_non_local.\1."),
    (r"_non_local\.theta\.conv\.", "_non_local.theta."),
    (r"_non_local\.conv_out\.conv\.", "_non_local.out.0."),
    (r"_non_local\.conv_out\.norm\.", "_non_local.out.1."),
]


def test_fbkd_matches_mmrazor():
    data = fixture("fbkd")
    settings = data["settings"]
    levels = list(settings["per_level"])
    loss = build_loss(
        "FBKD", 6, 6, "KD.FBKD.IN_FEATURES", levels,
        "KD.FBKD.REDUCTIONS", [settings["per_level"][f]["reduction"] for f in levels],
        "KD.FBKD.MAXPOOL_STRIDES", [settings["per_level"][f]["maxpool_stride"] for f in levels],
    )  # fmt: skip
    assert loss.term_weights == (
        settings["mask_l2_weight"], settings["channel_weight"], settings["spatial_weight"], settings["nonlocal_weight"]
    )  # fmt: skip
    load_authors_parameters(loss, data["parameters"], FBKD_RENAMES)
    loss.train()
    batch = level_batch(data)
    assert_matches_authors(data, loss(batch)["loss_kd_fbkd"], batch.student["features"])


def test_fbkd_names_the_fix_when_a_map_is_smaller_than_its_pooling():
    loss = build_loss(
        "FBKD", 4, 6, "KD.FBKD.IN_FEATURES", ["p5"], "KD.FBKD.REDUCTIONS", [2], "KD.FBKD.MAXPOOL_STRIDES", [4]
    )
    batch = level_batch({"inputs": {"student": {}, "teacher": {}}})
    batch.student["features"]["p5"] = torch.randn(2, 4, 4, 4)
    batch.teacher["features"]["p5"] = torch.randn(2, 6, 4, 4)
    with pytest.raises(ValueError, match="lower the level's KD.FBKD.MAXPOOL_STRIDES entry"):
        loss(batch)
    with pytest.raises(ValueError, match=r"KD.FBKD.REDUCTIONS = \[2, 2\] needs one entry per level"):
        build_loss("FBKD", 4, 6, "KD.FBKD.REDUCTIONS", [2, 2])
