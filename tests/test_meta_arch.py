"""DistillationRCNN keeps the teacher frozen and outside the student, and in eval mode *is* the student."""

import re

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from conftest import REPO, TEACHER_CONFIG, load_config
from kddet.engine import Trainer, divergence_hint
from kddet.modeling import DistillationRCNN
from kddet.teacher import build_teacher

FITNET_CONFIG = REPO / "configs/shapes/fitnet.yaml"
TRAIN_STEPS = 3


@pytest.fixture(scope="module")
def cfg(teacher_weights, datasets_root):
    return load_config(
        FITNET_CONFIG,
        "KD.TEACHER.CONFIG_FILE",
        str(TEACHER_CONFIG),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
        "SOLVER.BASE_LR",
        0.005,
        # After 3 steps the BN running statistics are far from the batch ones, so in eval mode
        # the class logits can be so large that every foreground score underflows to 0: a
        # negative threshold keeps those boxes, so the predictions compared are never empty.
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        -1.0,
    )


@pytest.fixture(scope="module")
def train_images(datasets_root):
    return DatasetCatalog.get("kddet_shapes_train")[:2]


@pytest.fixture(scope="module")
def test_inputs(cfg, datasets_root):
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(d) for d in DatasetCatalog.get("kddet_shapes_val")[:2]]


def train_batches(cfg, images, steps):
    loader = build_detection_train_loader(
        dataset=images, mapper=DatasetMapper(cfg, is_train=True), total_batch_size=2, num_workers=0
    )
    return (batch for _, batch in zip(range(steps), loader))


@pytest.fixture(scope="module")
def trained(cfg, train_images):
    """A DistillationRCNN after a few real SGD steps, and the optimizer that took them."""
    torch.manual_seed(0)
    np.random.seed(0)  # the train loader's shuffling seed and its random flips
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    model.train()
    with EventStorage(0) as storage:
        for step, batch in enumerate(train_batches(cfg, train_images, TRAIN_STEPS)):
            storage.iter = step
            losses = model(batch)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    return model, optimizer


def teacher_file_state(teacher_weights):
    return torch.load(teacher_weights, map_location="cpu")["model"]


def predictions(model, inputs):
    model.eval()
    with torch.no_grad():
        return [out["instances"] for out in model(inputs)]


def assert_same_predictions(got, expected):
    assert sum(len(x) for x in expected) > 0, "nothing detected: the comparison would be empty"
    for a, b in zip(got, expected):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


def test_teacher_is_frozen_and_outside_the_module_tree(trained):
    model, optimizer = trained
    teacher = model.teacher
    assert isinstance(model, DistillationRCNN) and isinstance(teacher, GeneralizedRCNN)
    model.train()
    assert model.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())

    assert not any(key.startswith("teacher.") for key in model.state_dict())
    teacher_storage = {t.data_ptr() for t in teacher.state_dict().values()}
    assert not any(t.data_ptr() in teacher_storage for t in model.state_dict().values())

    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized and not teacher_params & optimized
    assert not {id(m) for m in teacher.modules()} & {id(m) for m in model.modules()}


def test_training_steps_leave_teacher_weights_and_bn_statistics_bit_identical(trained, teacher_weights):
    model, _ = trained
    loaded = teacher_file_state(teacher_weights)
    state = model.teacher.state_dict()
    assert state.keys() == loaded.keys()
    assert any(key.endswith("running_mean") for key in state)  # BN buffers are compared too
    for key, value in state.items():
        assert torch.equal(value, loaded[key]), key


def test_training_steps_change_the_student(trained, cfg):
    model, _ = trained
    torch.manual_seed(0)
    initial = build_model(cfg).state_dict()
    weight = "backbone.bottom_up.stem.conv1.weight"
    assert not torch.equal(model.state_dict()[weight], initial[weight])
    assert not torch.equal(
        model.state_dict()["kd_losses.fitnet.adapters.p3.weight"], initial["kd_losses.fitnet.adapters.p3.weight"]
    )


def test_gradients_reach_student_and_adapters_but_not_teacher(cfg, train_images):
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(next(train_batches(cfg, train_images, 1)))
    assert losses["loss_kd_fitnet"] > 0
    losses["loss_kd_fitnet"].backward()  # the hint loss alone

    for level, adapter in model.kd_losses.fitnet.adapters.items():
        assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0, level
    for name, param in model.backbone.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.roi_heads.parameters())  # the hint reaches features only
    assert all(p.grad is None for p in model.teacher.parameters())


def test_eval_outputs_are_the_plain_students(trained, cfg, test_inputs):
    model, _ = trained
    student_cfg = cfg.clone()
    student_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    student = build_model(student_cfg)
    assert type(student) is GeneralizedRCNN
    student_state = {k: v for k, v in model.state_dict().items() if not k.startswith("kd_losses.")}
    student.load_state_dict(student_state, strict=True)
    assert_same_predictions(predictions(model, test_inputs), predictions(student, test_inputs))


def test_checkpoint_holds_student_and_adapters_only(trained, tmp_path):
    model, _ = trained
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    assert saved.keys() == model.state_dict().keys()
    assert not any(key.startswith("teacher") for key in saved)
    assert any(key.startswith("kd_losses.fitnet.adapters.") for key in saved)
    teacher_only = set(model.teacher.state_dict()) - set(saved)  # e.g. the second block of each stage
    assert "backbone.bottom_up.res2.1.conv1.weight" in teacher_only


@pytest.fixture(scope="module")
def teacher_alone(teacher_weights):
    """The teacher as detectron2 builds and loads it without kddet's help."""
    reference = build_model(load_config(TEACHER_CONFIG))
    DetectionCheckpointer(reference).load(str(teacher_weights))
    return reference


def test_build_teacher_scores_what_the_teacher_scored_alone(cfg, teacher_alone, test_inputs):
    assert_same_predictions(predictions(build_teacher(cfg), test_inputs), predictions(teacher_alone, test_inputs))


def test_teacher_inside_the_trained_model_still_scores_what_it_scored_alone(trained, teacher_alone, test_inputs):
    model, _ = trained
    assert_same_predictions(predictions(model.teacher, test_inputs), predictions(teacher_alone, test_inputs))


def trainer_at(cfg, iteration, tmp_path):
    """kddet's Trainer on ``cfg``, about to run step ``iteration``."""
    cfg = cfg.clone()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2])
    trainer = Trainer(cfg)
    trainer.iter = iteration
    return trainer


def test_a_non_finite_distillation_loss_stops_training_before_the_step_naming_its_node(cfg, monkeypatch, tmp_path):
    trainer = trainer_at(cfg, 7, tmp_path)
    monkeypatch.setattr(
        type(trainer.model.kd_losses.fitnet), "level_loss", lambda self, level, s, t: (s - t).pow(2).mean() * torch.inf
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    with EventStorage(7) as trainer.storage, pytest.raises(FloatingPointError) as error:
        trainer.run_step()
    message = str(error.value)
    assert (
        "iteration=7" in message
        and re.search(r"'loss_kd_fitnet': (np\.float64\()?inf", message)
        and "KD.FITNET" in message
    )
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.named_parameters())  # no step taken


def test_a_diverged_student_points_at_the_distillation_weights(cfg, monkeypatch, tmp_path):
    trainer = trainer_at(cfg, 0, tmp_path)

    def diverged(*args, **kwargs):
        raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")

    monkeypatch.setattr(trainer.model.proposal_generator, "forward", diverged)
    with EventStorage(0) as trainer.storage, pytest.raises(FloatingPointError) as error:
        trainer.run_step()
    assert "Training has diverged" in str(error.value) and "KD.FITNET" in str(error.value)


def test_a_diverged_plain_student_points_at_the_learning_rate(cfg):
    plain = cfg.clone()
    plain.merge_from_list(["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "KD.LOSSES", []])
    assert "KD." not in divergence_hint(plain) and "SOLVER.BASE_LR" in divergence_hint(plain)
