"""tools/export_student.py turns a DistillationRCNN checkpoint into weights the plain student loads,
and writes the config that rebuilds that student."""
import importlib.util

import pytest
import torch
import yaml

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

import kddet
from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config

spec = importlib.util.spec_from_file_location("export_student", REPO / "tools/export_student.py")
export_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_student)


@pytest.fixture(scope="module")
def distilled(teacher_weights, tmp_path_factory):
    """A DistillationRCNN and its model_final.pth, saved with the state train_net saves."""
    cfg = load_config(
        REPO / "configs/shapes/fitnet.yaml",
        "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights),
    )
    torch.manual_seed(1)  # not the seed the student config alone would be built with below
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    out = tmp_path_factory.mktemp("fitnet")
    checkpointer = DetectionCheckpointer(model, save_dir=str(out), optimizer=optimizer, scheduler=build_lr_scheduler(cfg, optimizer))
    checkpointer.save("model_final", iteration=2)
    (out / "config.yaml").write_text(cfg.dump())  # as train_net's default_setup writes it
    return model, out / "model_final.pth"


def test_export_keeps_the_student_only(distilled, tmp_path):
    model, checkpoint = distilled
    source = torch.load(checkpoint, map_location="cpu")
    assert {"optimizer", "scheduler", "iteration"} <= source.keys()
    assert any(key.startswith("kd_losses.") for key in source["model"])

    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth")]) == 0
    exported = torch.load(tmp_path / "student.pth", map_location="cpu")
    assert exported.keys() == {"model"}
    assert not any(key.startswith("kd_losses.") for key in exported["model"])
    for key, value in exported["model"].items():
        assert torch.equal(value, source["model"][key]), key


def student_inputs():
    mapper = DatasetMapper(load_config(STUDENT_CONFIG), is_train=False)
    return [mapper(d) for d in DatasetCatalog.get("kddet_shapes_val")[:2]]


def assert_same_predictions(model, student):
    inputs = student_inputs()
    model.eval()
    student.eval()
    with torch.no_grad():
        expected, got = model(inputs), student(inputs)
    assert sum(len(x["instances"]) for x in expected) > 0
    for a, b in zip(got, expected):
        a, b = a["instances"], b["instances"]
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_plain_student_loads_the_export_strictly_and_predicts_the_same(distilled, tmp_path, datasets_root):
    model, checkpoint = distilled
    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth")]) == 0
    torch.manual_seed(0)
    student = build_model(load_config(STUDENT_CONFIG))
    assert type(student) is GeneralizedRCNN
    student.load_state_dict(torch.load(tmp_path / "student.pth")["model"], strict=True)
    assert_same_predictions(model, student)


def test_the_exported_config_rebuilds_the_student_with_its_weights(distilled, tmp_path, datasets_root):
    model, checkpoint = distilled
    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth")]) == 0
    assert "KD" not in yaml.safe_load((tmp_path / "student.yaml").read_text())
    cfg = kddet.load_config(tmp_path / "student.yaml")  # what a deployment does
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "student.pth")
    torch.manual_seed(0)
    student = build_model(cfg)
    assert type(student) is GeneralizedRCNN
    assert student.state_dict().keys() == torch.load(cfg.MODEL.WEIGHTS)["model"].keys()
    DetectionCheckpointer(student).load(cfg.MODEL.WEIGHTS)
    assert_same_predictions(model, student)


def test_a_student_on_detectron2s_backbone_gets_a_config_plain_detectron2_reads(distilled, tmp_path):
    _, checkpoint = distilled
    recipe = REPO / "configs/voc/chen2017.yaml"  # R-18 student on detectron2's build_resnet_fpn_backbone
    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth"), "--config-file", str(recipe)]) == 0
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "student.yaml"))
    expected = load_config(recipe)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.WEIGHTS == str(tmp_path / "student.pth")
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.ROI_HEADS.NUM_CLASSES) == (18, expected.MODEL.ROI_HEADS.NUM_CLASSES)
    assert cfg.INPUT.FORMAT == expected.INPUT.FORMAT and cfg.MODEL.PIXEL_MEAN == expected.MODEL.PIXEL_MEAN


def test_export_without_the_runs_config_names_the_option(distilled, tmp_path, capsys):
    _, checkpoint = distilled
    elsewhere = tmp_path / "model_final.pth"
    elsewhere.write_bytes(checkpoint.read_bytes())
    assert export_student.main([str(elsewhere), str(tmp_path / "student.pth")]) == 1
    assert "pass --config-file" in capsys.readouterr().err
    assert not (tmp_path / "student.pth").exists()


def test_export_refuses_to_overwrite_without_force(distilled, tmp_path, capsys):
    _, checkpoint = distilled
    target = tmp_path / "student.pth"
    target.write_bytes(b"keep me")
    assert export_student.main([str(checkpoint), str(target)]) == 1
    assert target.read_bytes() == b"keep me"
    assert "pass --force" in capsys.readouterr().err

    assert export_student.main([str(checkpoint), str(target), "--force"]) == 0
    assert torch.load(target, map_location="cpu").keys() == {"model"}
    assert export_student.main([str(checkpoint), str(tmp_path / "other.pth")]) == 0
    assert export_student.main([str(checkpoint), str(tmp_path / "other.pth")]) == 1  # its config exists too


def test_export_rejects_a_file_that_is_no_detectron2_checkpoint(tmp_path, capsys):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    assert export_student.main([str(tmp_path / "other.pth"), str(tmp_path / "student.pth")]) == 1
    assert "no 'model' entry" in capsys.readouterr().err
    assert not (tmp_path / "student.pth").exists()
