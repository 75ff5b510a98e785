"""The fast teacher (KD.TEACHER.PRECISION, KD.TEACHER.CHANNELS_LAST): its records against the fp32
teacher's on the same shapes images and student proposals, measured per record kind; the records
are fp32; the student still learns through them and the teacher stays untouched."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from conftest import REPO, TEACHER_CONFIG, load_config
from kddet.losses import KD_LOSS_REGISTRY
from kddet.teacher import teacher_dtype
from kddet.warning_filters import filter_known_warnings
from test_meta_arch import teacher_file_state, train_batches
from test_mixed_precision import build_loss, float_tensors, map_tensors, realistic_batch
from test_head_losses import NUM_CLASSES

# Reads every kind of teacher record: FPN features (FitNet), RPN logits and deltas (RPNSoftCls,
# RPNBoundedReg), class scores and box deltas (RCNSoftCls) and box-head features (PKT).
LOSSES = ["FitNet", "RPNSoftCls", "RPNBoundedReg", "RCNSoftCls", "PKT"]
FAST = {
    "bf16": ["KD.TEACHER.PRECISION", "bf16"],
    "fp16": ["KD.TEACHER.PRECISION", "fp16"],
    "channels_last": ["KD.TEACHER.CHANNELS_LAST", True],
    "bf16_channels_last": ["KD.TEACHER.PRECISION", "bf16", "KD.TEACHER.CHANNELS_LAST", True],
}
# Relative error ||fast - fp32|| / ||fp32|| allowed on every record kind, about three times the
# largest measured on these images (random-init shapes teacher, seed 0; the largest kind is the
# RPN logits): bf16 1.8e-2, fp16 2.3e-3, channels_last alone 2.5e-6 (fp32 summed in another order).
RTOL = {"bf16": 5e-2, "fp16": 7e-3, "channels_last": 1e-5, "bf16_channels_last": 5e-2}


def distillation_cfg(teacher_weights, *opts):
    return load_config(
        REPO / "configs/shapes/chen2017.yaml",
        "KD.TEACHER.CONFIG_FILE",
        str(TEACHER_CONFIG),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
        "KD.LOSSES",
        LOSSES,
        *opts,
    )


@pytest.fixture(scope="module")
def batch(datasets_root):
    np.random.seed(0)
    cfg = load_config(REPO / "configs/shapes/student_slim_r8.yaml")
    return next(train_batches(cfg, DatasetCatalog.get("kddet_shapes_train")[:2], 1))


@pytest.fixture(scope="module")
def student_records(teacher_weights, batch):
    """What the student records in a training forward: its sampled proposals above all."""
    filter_known_warnings()  # module fixtures run before the autouse one that does it per test
    torch.manual_seed(0)
    model = build_model(distillation_cfg(teacher_weights)).train()
    with EventStorage(0), model.probe.recorder(model) as recorder:
        super(type(model), model).forward(batch)  # GeneralizedRCNN's: the student alone
    return recorder.records


def teacher_records(teacher_weights, batch, student_records, *opts):
    model = build_model(distillation_cfg(teacher_weights, *opts)).train()
    return model._teacher_student_records(model._teacher_image_records(batch), student_records)


def by_kind(records):
    """The tensors of each record kind, as lists: FPN levels, RPN levels, one tensor for the RoI head."""
    (logits, deltas), (scores, box_deltas) = records["rpn"], records["predictions"]
    return {
        "features": list(records["features"].values()),
        "rpn_logits": logits,
        "rpn_deltas": deltas,
        "box_features": [records["box_features"]],
        "class_scores": [scores],
        "box_deltas": [box_deltas],
    }


@pytest.fixture(scope="module")
def reference(teacher_weights, batch, student_records):
    return by_kind(teacher_records(teacher_weights, batch, student_records))


@pytest.mark.parametrize("fast", list(FAST))
def test_fast_teacher_records_are_fp32_and_close_to_the_fp32_teachers(
    fast, teacher_weights, batch, student_records, reference
):
    records = teacher_records(teacher_weights, batch, student_records, *FAST[fast])
    assert not any(t.requires_grad for t in float_tensors(records))
    errors = {}
    for kind, tensors in by_kind(records).items():
        assert len(tensors) == len(reference[kind]) and len(tensors) > 0, kind
        for value, expected in zip(tensors, reference[kind]):
            assert value.dtype == torch.float32 and value.shape == expected.shape, kind
            error = ((value - expected).norm() / expected.norm()).item()
            errors[kind] = max(errors.get(kind, 0.0), error)
    print(f"\n{fast}: largest relative error per record kind {errors}")
    assert max(errors.values()) < RTOL[fast], errors
    if "CHANNELS_LAST" in FAST[fast]:  # the option took effect: the maps come out NHWC, not contiguous
        p2 = records["features"]["p2"]
        assert p2.is_contiguous(memory_format=torch.channels_last) and not p2.is_contiguous()


def test_a_bf16_teacher_holds_its_weights_in_bf16_and_computes_the_same_records(
    teacher_weights, batch, student_records
):
    """Held in bf16, the weights are what autocast would cast them to at every call: same records, half the memory."""
    model = build_model(distillation_cfg(teacher_weights, *FAST["bf16"])).train()
    convs = [m for m in model.teacher.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(p.dtype == torch.bfloat16 for m in convs for p in m.parameters(recurse=False))
    held_in_bf16 = model._teacher_student_records(model._teacher_image_records(batch), student_records)
    for m in convs:  # back to fp32, exactly: autocast casts them down again
        for p in m.parameters(recurse=False):
            p.data = p.data.float()
    held_in_fp32 = model._teacher_student_records(model._teacher_image_records(batch), student_records)
    for kind, tensors in by_kind(held_in_bf16).items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, by_kind(held_in_fp32)[kind])), kind


@pytest.mark.parametrize("fast", ["fp32", "bf16"])
def test_the_teachers_two_passes_give_the_records_of_one(fast, teacher_weights, batch, student_records):
    """Backbone and RPN before the student's forward, box head after it: the same records, to the bit,
    as the teacher computing every kind at once (and in its precision), in fp32."""
    model = build_model(distillation_cfg(teacher_weights, *FAST.get(fast, []))).train()
    two_passes = model._teacher_student_records(model._teacher_image_records(batch), student_records)
    with torch.no_grad(), model._teacher_autocast():
        images = model.teacher.preprocess_image(batch).tensor
        one_pass = model.probe.teacher_records(model.teacher, model.probe.teacher_kinds, images, student_records, {})
    assert list(two_passes) == model.probe.teacher_read == ["features", "rpn", "box_features", "predictions"]
    for kind, tensors in by_kind(two_passes).items():
        expected = by_kind(one_pass)[kind]
        assert all(a.dtype == torch.float32 and torch.equal(a, b.float()) for a, b in zip(tensors, expected)), kind


def test_an_fp32_teacher_stays_fp32_in_the_students_autocast(teacher_weights, batch, student_records, reference):
    """SOLVER.AMP is the student's: the teacher computes as KD.TEACHER.PRECISION says."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        records = by_kind(teacher_records(teacher_weights, batch, student_records))
    for kind, tensors in records.items():
        assert all(torch.equal(t, r) for t, r in zip(tensors, reference[kind])), kind


def test_training_with_the_fast_teacher_trains_the_student_and_leaves_the_teacher_untouched(teacher_weights, batch):
    cfg = distillation_cfg(teacher_weights, *FAST["bf16_channels_last"], "SOLVER.BASE_LR", 0.005)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    with EventStorage(0):
        for _ in range(2):
            losses = model(batch)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(v for k, v in losses.items() if k.startswith("loss_kd_")).backward()  # distillation alone
            for name, param in [*model.backbone.named_parameters(), *model.kd_losses.named_parameters()]:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    loaded = teacher_file_state(teacher_weights)
    for key, value in model.teacher.state_dict().items():  # as loaded, in the precision the teacher holds them
        assert torch.equal(value, loaded[key].to(value.dtype)), key


@pytest.mark.parametrize(
    "capabilities, expected", [({"avx512_bf16": True}, torch.bfloat16), ({"avx512_f": True}, torch.float32)]
)
def test_auto_precision_is_bf16_on_a_cpu_with_bf16_instructions(capabilities, expected, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    cfg = load_config(TEACHER_CONFIG, "MODEL.DEVICE", "cpu", "KD.TEACHER.PRECISION", "auto")
    assert teacher_dtype(cfg) == expected


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(
        ValueError, match=r"KD.TEACHER.PRECISION is 'half'; use one of \['fp32', 'bf16', 'fp16', 'auto'\]"
    ):
        teacher_dtype(load_config(TEACHER_CONFIG, "KD.TEACHER.PRECISION", "half"))


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


@pytest.mark.parametrize("name", sorted(name for name, cls in KD_LOSS_REGISTRY if {"features", "rpn"} & set(cls.needs)))
def test_every_loss_on_maps_reads_channels_last_teacher_records_as_contiguous_ones(name):
    torch.manual_seed(0)
    loss = build_loss(name, 4, 6, "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES)
    reference_loss = copy.deepcopy(loss)  # OFD updates its margins on every call
    batch = realistic_batch(loss)
    nhwc = dataclasses.replace(batch, teacher={k: map_tensors(v, channels_last) for k, v in batch.teacher.items()})
    maps = [t for t in float_tensors(nhwc.teacher) if t.dim() == 4]
    assert maps and not any(t.is_contiguous() for t in maps)
    torch.manual_seed(1)  # MGD draws its masks
    expected = reference_loss(batch)
    torch.manual_seed(1)
    terms = loss(nhwc)
    assert terms.keys() == expected.keys()
    for key, value in terms.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-7)
