"""Data sets registered from a config's DATASETS.REGISTER: VOC-layout folders and COCO jsons on tiny
fixtures in the on-disk formats, trained on and evaluated through tools/train_net.py from a yaml
alone, and one message naming the fix for each kind of bad input."""

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.pascal_voc_evaluation import parse_rec

from conftest import (
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    load_config,
    run_train_net,
    write_coco_instances,
    write_voc_image,
    write_voc_split,
)
from kddet.data import load_voc_folder
from kddet.data.coco import load_coco_checked
from kddet.teacher import load_teacher_config

CLASSES = ["cat", "dog"]
VOC_TRAIN = {"a": [("cat", (11, 21, 40, 50), 0), ("dog", (50, 5, 90, 60), 0)], "b": [("dog", (1, 1, 100, 96), 0)]}
VOC_VAL = {"c": [("cat", (30, 30, 60, 70), 0)]}  # a split of one line: detectron2's own loader fails on it
COCO_IMAGES = {"x.jpg": (100, 96), "y.png": (80, 64)}
COCO_BOXES = [("x.jpg", 1, [10.0, 20.0, 30.0, 30.0]), ("y.png", 2, [0.0, 0.0, 80.0, 64.0])]
COCO_CATEGORIES = {1: "cat", 2: "dog"}

_names = (f"kddet_test_cfg_{i}" for i in itertools.count())  # a name is registered once per process


@pytest.fixture
def voc(tmp_path) -> Path:
    folder = tmp_path / "voc"
    for split, images in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        write_voc_split(folder, split, images)
        for image_id, objects in images.items():
            write_voc_image(folder, image_id, objects, (100, 96), ".png")
    return folder


@pytest.fixture
def coco(tmp_path):
    json_file, image_root = tmp_path / "coco/annotations.json", tmp_path / "coco/images"
    write_coco_instances(json_file, image_root, COCO_IMAGES, COCO_BOXES, COCO_CATEGORIES)
    return json_file, image_root


def node(**settings) -> str:
    """A data set's node as a yaml flow mapping (json values are yaml)."""
    return "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in settings.items()) + "}"


def voc_node(folder, split, classes=CLASSES, **extra) -> str:
    return node(FORMAT="voc", DIRNAME=str(folder), SPLIT=split, CLASSES=list(classes), **extra)


def coco_node(json_file, image_root, **extra) -> str:
    return node(FORMAT="coco", JSON_FILE=str(json_file), IMAGE_ROOT=str(image_root), **extra)


def write_config(tmp_path, register: dict, train=(), test=()) -> Path:
    """A config on the student's that registers ``register`` (name: node) and trains and tests on
    the names ``train`` and ``test``."""
    config = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.yaml"
    lines = [f'_BASE_: "{STUDENT_CONFIG}"', "DATASETS:", "  REGISTER:"]
    lines += [f"    {name}: {settings}" for name, settings in register.items()]
    lines += [f"  TRAIN: {json.dumps(list(train))}", f"  TEST: {json.dumps(list(test))}"]
    config.write_text("\n".join(lines) + "\n")
    return config


def test_a_voc_folder_and_a_coco_json_register_from_the_config(tmp_path, voc, coco):
    voc_name, coco_name = next(_names), next(_names)
    config = write_config(tmp_path, {voc_name: voc_node(voc, "val", YEAR=2007), coco_name: coco_node(*coco)})
    cfg = load_config(config)
    assert MetadataCatalog.get(voc_name).evaluator_type == "pascal_voc" and MetadataCatalog.get(voc_name).year == 2007
    assert MetadataCatalog.get(coco_name).evaluator_type == "coco"
    (record,) = DatasetCatalog.get(voc_name)  # the split of one image
    assert Path(record["file_name"]).name == "c.png" and record["annotations"][0]["bbox"] == [29.0, 29.0, 60.0, 70.0]
    records = DatasetCatalog.get(coco_name)
    assert [Path(r["file_name"]).name for r in records] == ["x.jpg", "y.png"]
    assert [a["category_id"] for r in records for a in r["annotations"]] == [0, 1]
    assert MetadataCatalog.get(coco_name).thing_classes == CLASSES
    load_config(config)  # the same settings again: nothing to do
    assert cfg.DATASETS.REGISTER[voc_name].SPLIT == "val"


def test_classes_may_be_written_as_a_tuple_the_way_detectron2_configs_write_them(tmp_path, voc):
    name = next(_names)
    load_config(
        write_config(tmp_path, {name: node(FORMAT="voc", DIRNAME=str(voc), SPLIT="val", CLASSES='("cat", "dog")')})
    )
    assert MetadataCatalog.get(name).thing_classes == CLASSES


def test_a_name_registered_with_other_settings_is_an_error_naming_the_key(tmp_path, voc):
    name = next(_names)
    load_config(write_config(tmp_path, {name: voc_node(voc, "train")}))
    with pytest.raises(
        ValueError, match=rf"DATASETS.REGISTER.{name} differs from the data set '{name}' already registered"
    ):
        load_config(write_config(tmp_path, {name: voc_node(voc, "val")}))
    with pytest.raises(
        ValueError, match=r"DATASETS.REGISTER.coco_2017_val: a data set 'coco_2017_val' is already registered"
    ):
        load_config(write_config(tmp_path, {"coco_2017_val": voc_node(voc, "val")}))


@pytest.mark.parametrize(
    "settings, message",
    [
        ('{FORMAT: "yolo"}', r"DATASETS.REGISTER.{name}.FORMAT is 'yolo': set it to one of \['coco', 'voc'\]"),
        (
            '{FORMAT: "coco", JSON_FILE: "a.json"}',
            r"DATASETS.REGISTER.{name} is a coco data set and needs DATASETS.REGISTER.{name}.IMAGE_ROOT",
        ),
        (
            '{FORMAT: "voc", DIRNAME: "d", SPLIT: "val", CLASSES: "cat, dog"}',
            r"DATASETS.REGISTER.{name}.CLASSES is 'cat, dog': give the class names as a list",
        ),
        (
            '{FORMAT: "voc", DIRNAME: "d", SPLIT: "val", CLASSES: ["a"], IMAGE_EXTENSION: "png"}',
            r"DATASETS.REGISTER.{name} has keys a voc data set does not read: \['IMAGE_EXTENSION'\]",
        ),
    ],
)
def test_a_wrong_data_set_node_names_its_key(tmp_path, settings, message):
    name = next(_names)
    with pytest.raises(ValueError, match=message.format(name=name)):
        load_config(write_config(tmp_path, {name: settings}))
    assert name not in DatasetCatalog.list()


def edit_xml(folder, image_id, old, new):
    xml = folder / f"Annotations/{image_id}.xml"
    xml.write_text(xml.read_text().replace(old, new, 1))


def test_bad_voc_folders_name_the_file_to_fix(voc):
    with pytest.raises(FileNotFoundError, match=r"No split file .*ImageSets/Main/test.txt"):
        load_voc_folder(str(voc), "test", CLASSES)
    with pytest.raises(
        ValueError, match=r"has an object of class 'dog', which is not among the classes \['cat'\]: add it"
    ):
        load_voc_folder(str(voc), "train", ["cat"])
    (voc / "ImageSets/Main/empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"empty.txt lists no image ids"):
        load_voc_folder(str(voc), "empty", CLASSES)
    with pytest.raises(FileNotFoundError, match=r"1 of the 1 ids in ImageSets/Main/val.txt have no image .* \['c'\]"):
        load_voc_folder(str(voc), "val", CLASSES, image_ext="jpg")
    edit_xml(voc, "c", "<xmax>60</xmax>", "<xmax>101</xmax>")
    with pytest.raises(
        ValueError, match=r"c.xml has a 'cat' box \(xmin 30, ymin 30, xmax 101, ymax 70\) outside its 100x96 image"
    ):
        load_voc_folder(str(voc), "val", CLASSES)
    (voc / "Annotations/c.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"No annotation .*Annotations/c.xml: write it, or remove its id"):
        load_voc_folder(str(voc), "val", CLASSES)


def test_a_voc_coordinate_that_is_not_an_integer_stops_at_load_naming_the_file_and_line(voc):
    """detectron2's VOC evaluator reads coordinates with int(): a float would train, then fail when
    the run is evaluated."""
    xml = voc / "Annotations/c.xml"
    tree = ET.ElementTree(ET.fromstring(xml.read_text()))
    ET.indent(tree)  # one element per line, as annotation tools write them
    tree.write(xml, encoding="unicode")
    edit_xml(voc, "c", "<xmax>60</xmax>", "<xmax>60.5</xmax>")
    line = next(n for n, text in enumerate(xml.read_text().splitlines(), 1) if "<xmax>" in text)
    with pytest.raises(ValueError) as error:
        load_voc_folder(str(voc), "val", CLASSES)
    assert f"c.xml, line {line}: <xmax> is '60.5', not an integer" in str(error.value)
    assert "round the value in the file" in str(error.value)
    with pytest.raises(ValueError):  # what the check spares: the evaluator's own failure on the file
        parse_rec(str(xml))
    edit_xml(voc, "c", "<width>100</width>", "<width>100.0</width>")
    with pytest.raises(ValueError, match=r"c.xml, line \d+: <width> is '100.0', not an integer"):
        load_voc_folder(str(voc), "val", CLASSES)


def test_bad_coco_jsons_name_the_file_to_fix(tmp_path, coco):
    json_file, image_root = coco
    with pytest.raises(FileNotFoundError, match=r"No annotation json .*missing.json for data set 't'"):
        load_coco_checked(str(tmp_path / "missing.json"), str(image_root), "t")
    with pytest.raises(
        ValueError, match=r"categories of .* are \['cat', 'dog'\] \(by id\), not the classes \['dog', 'cat'\]"
    ):
        load_coco_checked(str(json_file), str(image_root), next(_names), ["dog", "cat"])
    (image_root / "y.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 images .* are not in .*images \(e.g. \[.*y.png'\]\)"):
        load_coco_checked(str(json_file), str(image_root), next(_names))
    write_coco_instances(json_file, image_root, COCO_IMAGES, [("x.jpg", 1, [80.0, 20.0, 30.0, 30.0])], COCO_CATEGORIES)
    with pytest.raises(
        ValueError, match=r"box \[x, y, w, h\] = \[80.0, 20.0, 30.0, 30.0\] outside its 100x96 image .*x.jpg"
    ):
        load_coco_checked(str(json_file), str(image_root), next(_names))
    write_coco_instances(json_file, image_root, {}, [], COCO_CATEGORIES)
    with pytest.raises(ValueError, match=r"annotations.json lists no images"):
        load_coco_checked(str(json_file), str(image_root), next(_names))


TRAIN_2_ITERS = (
    "MODEL.ROI_HEADS.NUM_CLASSES",
    2,
    "SOLVER.IMS_PER_BATCH",
    2,
    "SOLVER.MAX_ITER",
    2,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    -1.0,  # keep the barely trained student's boxes: AP, not nan
)


@pytest.mark.slow
def test_train_net_trains_and_evaluates_on_data_sets_of_the_yaml_alone(tmp_path, voc, coco, datasets_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    register = {
        "user_voc_train": voc_node(voc, "train"),
        "user_voc_val": voc_node(voc, "val", YEAR=2007),
        "user_coco_val": coco_node(*coco, CLASSES=CLASSES),
    }
    config = write_config(tmp_path, register, train=["user_voc_train"], test=["user_voc_val", "user_coco_val"])
    out = tmp_path / "out"
    proc = run_train_net("--config-file", config, *TRAIN_2_ITERS, "OUTPUT_DIR", out, datasets_root=datasets_root)
    log = proc.stdout + proc.stderr
    assert "Evaluating user_voc_val using 2007 metric" in log  # the VOC evaluator, with YEAR's metric
    assert "Evaluation results for bbox" in log  # COCO's, on user_coco_val
    assert (out / "model_final.pth").is_file()
    assert "user_coco_val" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_train_net_stops_before_training_on_a_class_the_yaml_does_not_list(tmp_path, voc, datasets_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = write_config(tmp_path, {"user_voc_cats": voc_node(voc, "train", classes=["cat"])}, train=["user_voc_cats"])
    proc = run_train_net(
        "--config-file",
        config,
        *TRAIN_2_ITERS,
        "OUTPUT_DIR",
        tmp_path / "out",
        datasets_root=datasets_root,
        returncode=1,
    )
    last_line = proc.stderr.strip().splitlines()[-1]
    assert (
        last_line.startswith("ValueError: ")
        and "has an object of class 'dog', which is not among the classes ['cat']" in last_line
    )
    assert "Starting training" not in proc.stdout + proc.stderr


def test_a_teachers_own_data_sets_are_not_registered(tmp_path):
    """The teacher's config is read for its model only: its DATASETS.REGISTER (a name the student may
    register otherwise) is left alone."""
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(
        f'_BASE_: "{TEACHER_CONFIG}"\nDATASETS:\n  REGISTER:\n    kddet_teacher_only_set:\n'
        '      FORMAT: "voc"\n      DIRNAME: "/nowhere"\n      SPLIT: "train"\n      CLASSES: ["a"]\n'
    )
    teacher_cfg = load_teacher_config(load_config(STUDENT_CONFIG, "KD.TEACHER.CONFIG_FILE", str(teacher)))
    assert "kddet_teacher_only_set" in teacher_cfg.DATASETS.REGISTER
    assert "kddet_teacher_only_set" not in DatasetCatalog.list()
