"""The capture probe: which records each network gives, named records from a real forward, and a
C4 (Res5ROIHeads) network that stops at build time where a loss reads what it does not have."""

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.capture import RECORD_KINDS, BoxPredictions, RCNNProbe, RPNOutputs, SampledAnchors
from kddet.modeling import DistillationRCNN
from test_meta_arch import train_batches

# A small C4 Faster R-CNN on the shapes data set: ResNet-50 layout at narrow widths, res4 features
# (128 channels, stride 16) for the RPN and Res5ROIHeads.
C4_CONFIG = f"""_BASE_: "{REPO}/configs/shapes/Base-Shapes.yaml"
MODEL:
  BACKBONE:
    NAME: "build_resnet_backbone"
  RESNETS:
    DEPTH: 50
    OUT_FEATURES: ["res4"]
    STEM_OUT_CHANNELS: 16
    RES2_OUT_CHANNELS: 32
    WIDTH_PER_GROUP: 8
  ANCHOR_GENERATOR:
    SIZES: [[16, 32, 64]]
  RPN:
    IN_FEATURES: ["res4"]
  ROI_HEADS:
    NAME: "Res5ROIHeads"
    IN_FEATURES: ["res4"]
"""


@pytest.fixture(scope="module")
def c4_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("c4") / "c4.yaml"
    path.write_text(C4_CONFIG)
    return path


def distillation_cfg(student_config, teacher_config, losses, *opts):
    return load_config(
        student_config,
        "MODEL.META_ARCHITECTURE",
        "DistillationRCNN",
        "KD.TEACHER.CONFIG_FILE",
        str(teacher_config),
        "KD.LOSSES",
        list(losses),
        *opts,
    )


def test_the_probe_records_what_the_losses_read_and_what_the_teacher_runs_on():
    probe = RCNNProbe(
        {"KD": ("predictions",), "FGFI": ("features", "anchors")},
        {"KD": ("predictions",), "FGFI": ("features", "anchors")},
    )
    # The teacher's box head runs on the student's proposals, from its own features.
    assert probe.teacher_kinds == ["features", "box_features", "predictions"]
    assert probe.student_kinds == ["features", "anchors", "proposals", "predictions"]
    # Its maps need nothing of the student's and are computed before the student's forward; its box
    # head's records need the student's proposals. Box features no loss reads are not kept.
    assert probe.teacher_image_kinds == ["features"]
    assert probe.teacher_student_kinds == ["box_features", "predictions"]
    assert probe.teacher_read == ["features", "predictions"]
    assert RCNNProbe({"KD": ("predictions",)}, {"KD": ("predictions",)}).teacher_read == ["predictions"]
    rpn_only = RCNNProbe({"RPNSoftCls": ("rpn", "rpn_labels")}, {"RPNSoftCls": ("rpn", "rpn_labels")})
    assert rpn_only.teacher_image_kinds == ["features", "rpn"] and rpn_only.teacher_student_kinds == []
    assert rpn_only.teacher_read == ["rpn"]
    # A loss that reads no teacher (VirtualTeacher) has the teacher compute nothing for it.
    probe = RCNNProbe({"VirtualTeacher": ("predictions", "proposals")}, {})
    assert probe.teacher_kinds == [] and probe.student_kinds == ["proposals", "predictions"]
    assert set(RECORD_KINDS) == {"features", "anchors", "rpn", "rpn_labels", "proposals", "box_features", "predictions"}


def test_a_training_forward_gives_named_records(datasets_root):
    cfg = load_config(STUDENT_CONFIG)
    torch.manual_seed(0)
    np.random.seed(0)
    student = build_model(cfg).train()
    probe = RCNNProbe({"all": tuple(RECORD_KINDS)}, {})
    with EventStorage(0), probe.recorder(student) as recorder:
        student(next(train_batches(cfg, DatasetCatalog.get("kddet_shapes_train")[:2], 1)))
    records = recorder.records
    assert set(records) == set(RECORD_KINDS)
    assert isinstance(records["rpn"], RPNOutputs) and len(records["rpn"].objectness_logits) == 5
    assert isinstance(records["rpn_labels"], SampledAnchors) and len(records["rpn_labels"].labels) == 2
    assert isinstance(records["predictions"], BoxPredictions)
    assert records["predictions"].scores.shape == (len(records["box_features"]), cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1)


@pytest.mark.parametrize("loss", ["KD", "RCNSoftCls", "SP"])
def test_a_c4_teacher_with_a_roi_loss_stops_at_build_naming_its_heads(loss, c4_config, datasets_root):
    cfg = distillation_cfg(STUDENT_CONFIG, c4_config, [loss])
    with pytest.raises(ValueError) as error:
        DistillationRCNN(cfg, load_teacher_weights=False)
    message = str(error.value)
    assert f"{loss} in KD.LOSSES needs the teacher's" in message and "Res5ROIHeads" in message
    assert "roi_heads.box_head" in message and "FPN config" in message


def test_a_c4_student_with_a_roi_feature_loss_stops_at_build_naming_its_heads(c4_config, datasets_root):
    cfg = distillation_cfg(c4_config, TEACHER_CONFIG, ["PKT"])
    with pytest.raises(ValueError) as error:
        DistillationRCNN(cfg, load_teacher_weights=False)
    message = str(error.value)
    assert "PKT in KD.LOSSES needs the student's 'box_features'" in message and "Res5ROIHeads" in message


def test_a_c4_student_and_teacher_distil_their_features(c4_config, datasets_root):
    cfg = distillation_cfg(c4_config, c4_config, ["FitNet"], "KD.FITNET.IN_FEATURES", ["res4"])
    torch.manual_seed(0)
    np.random.seed(0)
    model = DistillationRCNN(cfg, load_teacher_weights=False).train()
    with EventStorage(0):
        losses = model(next(train_batches(cfg, DatasetCatalog.get("kddet_shapes_train")[:2], 1)))
    assert torch.isfinite(losses["loss_kd_fitnet"]) and losses["loss_kd_fitnet"] > 0
    losses["loss_kd_fitnet"].backward()
    assert all(p.grad is not None for p in model.kd_losses.parameters())
