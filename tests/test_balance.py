"""KD.BALANCE: each balanced loss is measured, then held at RATIO times the detector's losses."""

import importlib.util

import pytest
import torch

from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, TEACHER_CONFIG, load_config
from kddet.balance import LossBalancer

SP_CONFIG = REPO / "configs/shapes/sp.yaml"


def step(balancer, storage, iteration, detector, kd_values):
    """One iteration of the balancer on scalar terms ``{loss: value}``; the values it returns."""
    storage.iter = iteration
    terms = {name: {f"loss_kd_{name}": torch.tensor(float(v))} for name, v in kd_values.items()}
    out = balancer(torch.tensor(float(detector)), terms)
    return {name: float(next(iter(t.values()))) for name, t in out.items()}


def test_scale_follows_the_rule_and_is_held():
    balancer = LossBalancer(["fitnet"], ratio=0.5, iters=3)
    detector, fitnet = [4.0, 2.0, 3.0], [1.0, 2.0, 3.0]
    with EventStorage(0) as storage:
        for i, (d, k) in enumerate(zip(detector, fitnet)):
            assert step(balancer, storage, i, d, {"fitnet": k})["fitnet"] == 0.0  # measured, zeroed
        expected = 0.5 * (sum(detector) / 3) / (sum(fitnet) / 3)
        assert float(balancer.scale[0]) == pytest.approx(expected)
        # Held: later detector losses or term sizes do not move the scale.
        assert step(balancer, storage, 3, 100.0, {"fitnet": 10.0})["fitnet"] == pytest.approx(10.0 * expected)
        assert step(balancer, storage, 4, 0.1, {"fitnet": 2.0})["fitnet"] == pytest.approx(2.0 * expected)
        assert storage.latest()["kd_balance/fitnet"][0] == pytest.approx(expected)


def test_measurement_waits_for_a_loss_in_its_own_warm_up_and_leaves_others_alone():
    balancer = LossBalancer(["fgfi"], ratio=0.25, iters=2)
    with EventStorage(0) as storage:
        # FGFI returns 0 during its warm-up: not measured. NST is not balanced: untouched.
        for i in range(3):
            out = step(balancer, storage, i, 9.0, {"fgfi": 0.0, "nst": 0.7})
            assert out == {"fgfi": 0.0, "nst": pytest.approx(0.7)}
        assert int(balancer.measured[0]) == 0
        step(balancer, storage, 3, 2.0, {"fgfi": 4.0, "nst": 0.7})
        step(balancer, storage, 4, 6.0, {"fgfi": 12.0, "nst": 0.7})
        assert float(balancer.scale[0]) == pytest.approx(0.25 * 4.0 / 8.0)


def test_a_resumed_balancer_keeps_its_scale():
    balancer = LossBalancer(["sp"], ratio=0.5, iters=1)
    with EventStorage(0) as storage:
        step(balancer, storage, 0, 3.0, {"sp": 300.0})
    resumed = LossBalancer(["sp"], ratio=0.5, iters=1)
    resumed.load_state_dict(balancer.state_dict())
    with EventStorage(1) as storage:
        assert step(resumed, storage, 1, 1.0, {"sp": 60.0})["sp"] == pytest.approx(60.0 * 0.5 * 3.0 / 300.0)


def test_scales_saved_for_other_losses_are_measured_again():
    balancer = LossBalancer(["nst", "sp"], ratio=0.5, iters=1)
    with EventStorage(0) as storage:
        step(balancer, storage, 0, 3.0, {"nst": 1.0, "sp": 2.0})
    reordered = LossBalancer(["sp", "nst"], ratio=0.5, iters=1)
    reordered.load_state_dict(balancer.state_dict())
    assert int(reordered.measured.sum()) == 0 and float(reordered.scale.sum()) == 0.0
    same = LossBalancer(["nst", "sp"], ratio=0.5, iters=1)
    same.load_state_dict(balancer.state_dict())
    assert torch.equal(same.scale, balancer.scale)


def test_non_finite_iterations_are_not_measured_and_stay_out_of_the_loss():
    balancer = LossBalancer(["kd"], ratio=0.5, iters=1)
    with EventStorage(0) as storage:
        assert step(balancer, storage, 0, 3.0, {"kd": float("nan")})["kd"] == 0.0
        assert int(balancer.measured[0]) == 0
        step(balancer, storage, 1, 3.0, {"kd": 1.5})
    assert float(balancer.scale[0]) == pytest.approx(0.5 * 3.0 / 1.5)


def test_bad_settings_name_the_key(teacher_weights):
    with pytest.raises(ValueError, match="RATIO > 0"):
        LossBalancer(["sp"], ratio=0.0, iters=5)
    cfg = load_config(
        SP_CONFIG,
        "KD.TEACHER.CONFIG_FILE",
        str(TEACHER_CONFIG),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
        "KD.BALANCE.ENABLED",
        True,
        "KD.BALANCE.LOSSES",
        ["FitNet"],
    )
    with pytest.raises(ValueError, match=r"KD.BALANCE.LOSSES names \['fitnet'\], which are not in KD.LOSSES"):
        build_model(cfg)


def test_in_the_model_the_balanced_term_trains_the_student_never_the_teacher(teacher_weights, datasets_root):
    """SP at the paper's 3000 (which diverges unbalanced): after a 1-iteration measurement the term is
    RATIO x the detector's losses, its gradient reaches the student and nothing reaches the teacher,
    and the scale is saved with the model but not exported."""
    cfg = load_config(
        SP_CONFIG,
        "KD.TEACHER.CONFIG_FILE",
        str(TEACHER_CONFIG),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
        "KD.SP.WEIGHT",
        3000.0,
        "KD.BALANCE.ENABLED",
        True,
        "KD.BALANCE.ITERS",
        1,
        "KD.BALANCE.RATIO",
        0.5,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    loader = build_detection_train_loader(
        dataset=DatasetCatalog.get("kddet_shapes_train")[:2],
        mapper=DatasetMapper(cfg, is_train=True),
        total_batch_size=2,
        num_workers=0,
    )
    batches = iter(loader)
    sp = model.kd_losses["sp"]
    raw = []  # what SP returns at its configured weight, before the balancer
    sp.forward = lambda batch, forward=sp.forward: raw.append(forward(batch)["loss_kd_sp"]) or {"loss_kd_sp": raw[-1]}
    with EventStorage(0) as storage:
        first = model(next(batches))
        assert first["loss_kd_sp"].item() == 0.0
        detector = sum(v for k, v in first.items() if not k.startswith("loss_kd_"))
        storage.iter = 1
        second = model(next(batches))
    scale = float(model.kd_balancer.scale[0])
    assert scale == pytest.approx(0.5 * float(detector) / float(raw[0]), rel=1e-5)
    assert float(second["loss_kd_sp"]) == pytest.approx(scale * float(raw[1]), rel=1e-5)
    second["loss_kd_sp"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.box_head.parameters())
    assert "kd_balancer.scale" in model.state_dict()

    spec = importlib.util.spec_from_file_location("export_student", REPO / "tools/export_student.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    assert not any(k.startswith("kd_balancer.") for k in export.student_state({"model": model.state_dict()}))
