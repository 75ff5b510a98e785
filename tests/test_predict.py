"""tools/predict.py on shapes images: one drawing per image, COCO-format detections whose counts are
the printed ones and the model's own, the same with the student's ONNX export."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.export import Predictor, export_model, load_detector
from kddet.visualize import draw_side_by_side

spec = importlib.util.spec_from_file_location("predict", REPO / "tools/predict.py")
predict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict)

THRESHOLD = 0.1  # random weights score every class about 1/7 or near 1


@pytest.fixture(scope="module")
def student(tmp_path_factory, datasets_root):
    """A random-weight slim student saved as train_net saves it, its config, and three val images."""
    out = tmp_path_factory.mktemp("student")
    cfg = load_config(STUDENT_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    (out / "student.yaml").write_text(cfg.dump())
    files = [Path(d["file_name"]) for d in DatasetCatalog.get("kddet_shapes_val")[:3]]
    return cfg, model, out, files


def expected_counts(cfg, model, files):
    predictor = Predictor(cfg, load_detector("pth", model))
    with torch.no_grad():
        results = [predictor([read_image(str(f), format=cfg.INPUT.FORMAT)])[0] for f in files]
    return [int((r.scores >= THRESHOLD).sum()) for r in results]


def run_predict(config, weights, files, output, capsys, *args):
    argv = ["--config", str(config), "--input", *map(str, files), "--output", str(output)]
    argv += ["--confidence-threshold", str(THRESHOLD), *args] + (["--weights", str(weights)] if weights else [])
    assert predict.main(argv) == 0
    return capsys.readouterr().out


def assert_written(output, files, counts, out):
    for file, count in zip(files, counts):
        assert f"{file.name}: {count} detections" in out
        drawn = Image.open(output / f"{file.stem}.png")
        assert drawn.size == Image.open(file).size
    detections = json.loads((output / "detections.json").read_text())
    assert [i["file_name"] for i in detections["images"]] == [f.name for f in files]
    per_image = [sum(a["image_id"] == i["id"] for a in detections["annotations"]) for i in detections["images"]]
    assert per_image == counts
    assert [c["name"] for c in detections["categories"]] == ["disk", "ring", "box", "bar", "triangle", "cross"]
    assert all(
        a["score"] >= THRESHOLD and a["bbox"][2] >= 0 and 0 <= a["category_id"] < 6 for a in detections["annotations"]
    )
    assert f"{len(files)} images, {sum(counts)} detections" in out and "mean latency" in out
    return detections


def test_predict_writes_drawings_and_coco_detections(student, tmp_path, capsys):
    cfg, model, out, files = student
    counts = expected_counts(cfg, model, files)
    assert sum(counts) > 0
    output = tmp_path / "pth"
    printed = run_predict(out / "student.yaml", None, files, output, capsys)  # the config's MODEL.WEIGHTS
    detections = assert_written(output, files, counts, printed)
    drawn = np.asarray(Image.open(output / f"{files[0].stem}.png").convert("RGB"))
    assert not np.array_equal(drawn, np.asarray(Image.open(files[0]).convert("RGB")))  # boxes were drawn

    onnx_file = export_model(
        model, [Predictor(cfg, None).preprocess(read_image(str(files[0])))], out / "student.onnx", "onnx"
    )
    printed = run_predict(out / "student.yaml", onnx_file, files, tmp_path / "onnx", capsys)  # format from the suffix
    assert "onnx on cpu" in printed
    from_onnx = assert_written(tmp_path / "onnx", files, counts, printed)
    for a in detections["annotations"]:  # near-equal scores may come in another order
        same = [
            b["bbox"]
            for b in from_onnx["annotations"]
            if (b["image_id"], b["category_id"]) == (a["image_id"], a["category_id"])
        ]
        assert any(b == pytest.approx(a["bbox"], abs=0.1) for b in same), a


def test_predict_without_weights_names_the_option(student, tmp_path, capsys):
    _, _, out, files = student
    assert (
        predict.main(
            [
                "--config",
                str(out / "student.yaml"),
                "--weights",
                str(tmp_path / "none.onnx"),
                "--input",
                str(files[0]),
                "--output",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "pass --weights" in capsys.readouterr().err


def test_side_by_side_draws_teacher_and_student_on_validation_images(student, teacher_weights, tmp_path):
    _, _, out, _ = student
    folder = draw_side_by_side(
        TEACHER_CONFIG,
        teacher_weights,
        STUDENT_CONFIG,
        out / "model_final.pth",
        tmp_path / "pairs",
        num_images=2,
        score_threshold=THRESHOLD,
    )
    drawings = sorted(folder.glob("*.png"))
    assert len(drawings) == 2
    width, height = Image.open(drawings[0]).size
    assert width > 2 * 3 * 128 and height > 3 * 128  # two panels at 3x the 128 px images, under titles
