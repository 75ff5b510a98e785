"""tools/export_student.py turns a DistillationRCNN checkpoint into weights the plain student loads,
and writes the config that rebuilds that student."""

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

import kddet
from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.export import SUFFIXES, ExportError, ParityError, check_parity, export_model, load_detector
from kddet.modeling.frozen_bn import measure_frozen_bn_statistics

spec = importlib.util.spec_from_file_location("export_student", REPO / "tools/export_student.py")
export_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_student)


@pytest.fixture(scope="module")
def distilled(teacher_weights, tmp_path_factory):
    """A DistillationRCNN and its model_final.pth, saved with the state train_net saves."""
    cfg = load_config(
        REPO / "configs/shapes/fitnet.yaml",
        "KD.TEACHER.CONFIG_FILE",
        str(TEACHER_CONFIG),
        "KD.TEACHER.WEIGHTS",
        str(teacher_weights),
    )
    torch.manual_seed(1)  # not the seed the student config alone would be built with below
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    out = tmp_path_factory.mktemp("fitnet")
    checkpointer = DetectionCheckpointer(
        model, save_dir=str(out), optimizer=optimizer, scheduler=build_lr_scheduler(cfg, optimizer)
    )
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


# Traced exports (kddet/export.py): TorchScript and ONNX run in onnxruntime, checked against PyTorch.


@pytest.fixture(scope="module")
def random_student():
    """The slim shapes student with random weights (fixed seed): boxes of every kind to compare."""
    torch.manual_seed(0)
    return build_model(load_config(STUDENT_CONFIG)).eval()


@pytest.fixture(scope="module")
def parity_images(datasets_root):
    """Three validation images resized for test, and a random one of another size and aspect."""
    cfg = load_config(STUDENT_CONFIG)
    files = [Path(d["file_name"]) for d in DatasetCatalog.get("kddet_shapes_val")[:3]]
    images = export_student.parity_inputs(cfg, files)
    return images + [torch.randint(0, 256, (3, 96, 160), generator=torch.Generator().manual_seed(0)).float()]


@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def traced(request, random_student, parity_images, tmp_path_factory):
    """The random student exported in each format, traced on the first parity image."""
    path = tmp_path_factory.mktemp("traced") / f"student{SUFFIXES[request.param]}"
    return request.param, export_model(random_student, parity_images[:1], path, request.param)


def test_the_traced_student_detects_what_the_pytorch_student_detects(traced, random_student, parity_images):
    format, path = traced
    detector = load_detector(format, path)
    if format == "onnx":
        import onnxruntime

        assert isinstance(detector.session, onnxruntime.InferenceSession)
    assert detector.batch_size == 1
    compared = check_parity(load_detector("pth", random_student), detector, parity_images)
    assert compared >= 4 * 10  # boxes on every image, of both sizes (random weights detect plenty)


def _changed_copy(format, path, tmp_path):
    """The export with one weight of the box head's first layer scaled by 1.05."""
    name = "model.roi_heads.box_head.fc1.weight"
    target = tmp_path / path.name
    if format == "torchscript":
        module = torch.jit.load(str(path))
        with torch.no_grad():
            module.state_dict()[name].mul_(1.05)
        module.save(str(target))
    else:
        model = onnx.load(str(path))
        initializer = next(i for i in model.graph.initializer if i.name == name)
        initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) * 1.05, name))
        onnx.save(model, str(target))
    return target


def test_parity_fails_on_a_changed_weight(traced, random_student, parity_images, tmp_path):
    format, path = traced
    changed = load_detector(format, _changed_copy(format, path, tmp_path))
    with pytest.raises(ParityError, match=r"image \d: .*tolerance 0.1 px"):
        check_parity(load_detector("pth", random_student), changed, parity_images)


def test_a_batched_export_takes_images_of_different_sizes(random_student, parity_images, tmp_path):
    path = export_model(random_student, parity_images[2:4], tmp_path / "student.onnx", "onnx")
    detector = load_detector("onnx", path)
    assert detector.batch_size == 2
    assert check_parity(load_detector("pth", random_student), detector, parity_images) > 0


def test_a_coco_sized_student_exports_at_800_px(tmp_path):
    """The COCO MobileNetV2-FPN student, random weights, on one 800x1216 image in both formats."""
    torch.manual_seed(0)
    model = build_model(load_config(REPO / "configs/coco/student_mobilenet_v2.yaml", "MODEL.DEVICE", "cpu")).eval()
    image = torch.randint(0, 256, (3, 800, 1216), generator=torch.Generator().manual_seed(0)).float()
    measure_frozen_bn_statistics(model, [{"image": image}])
    expected = load_detector("pth", model)([image])
    for format in ("torchscript", "onnx"):
        path = export_model(model, [image], tmp_path / f"student{SUFFIXES[format]}", format)
        assert check_parity(lambda images: expected, load_detector(format, path), [image]) > 0, format


def test_export_student_writes_a_checked_onnx_file(distilled, tmp_path, datasets_root, capsys):
    _, checkpoint = distilled
    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth"), "--format", "onnx"]) == 0
    printed = capsys.readouterr().out
    cfg = kddet.load_config(tmp_path / "student.yaml")
    student = build_model(cfg).eval()
    DetectionCheckpointer(student).load(cfg.MODEL.WEIGHTS)
    images = export_student.parity_inputs(cfg)
    assert len(images) == export_student.PARITY_IMAGES
    compared = check_parity(load_detector("pth", student), load_detector("onnx", tmp_path / "student.onnx"), images)
    if compared:
        assert f"finds the PyTorch student's {compared} detections on {len(images)} images" in printed
    else:
        assert "Parity: NOTHING was compared" in printed
    assert export_student.main([str(checkpoint), str(tmp_path / "student.pth"), "--format", "onnx"]) == 1  # exists


def test_what_cannot_be_exported_is_named(distilled, random_student, monkeypatch, tmp_path):
    model, _ = distilled
    with pytest.raises(ExportError, match=r"DistillationRCNN is exported through its student: tools/export_student.py"):
        export_model(model, [torch.zeros(3, 64, 64)], tmp_path / "model.onnx", "onnx")
    monkeypatch.setattr(random_student.roi_heads, "mask_on", True)
    with pytest.raises(ExportError, match=r"mask_on True.*set MODEL.MASK_ON False"):
        export_model(random_student, [torch.zeros(3, 64, 64)], tmp_path / "student.ts", "torchscript")
    assert not (tmp_path / "student.ts").exists()
