"""The data sets kddet trains and scores on: detectron2's builtin VOC 2007 and COCO 2017 loaders,
kddet's VOC-layout folders of PNG and JPEG images, and kddet's evaluators, on tiny fixtures in the
on-disk formats; and the embedded shapes data set."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances

from conftest import REPO, write_image, write_voc_image, write_voc_split
from kddet.data import load_voc_folder, register_voc_folder, shapes
from kddet.evaluation import build_evaluator

# VOC: (xmin, ymin, xmax, ymax) are 1-based inclusive pixel indices, as in the VOC devkit.
VOC_SIZE = (500, 375)  # width, height
VOC_TRAINVAL = {
    "000005": [("chair", (263, 211, 324, 339), 0), ("chair", (5, 244, 67, 374), 1)],  # the second is difficult
    "000007": [("car", (141, 50, 500, 330), 0)],
}
VOC_TEST = {  # every class once, so that a perfect detector scores 100 on all 20
    image_id: [
        (name, (1 + 90 * (i % 5), 1 + 180 * (i // 5), 80 + 90 * (i % 5), 150 + 180 * (i // 5)), 0)
        for i, name in enumerate(names)
    ]
    for image_id, names in (("000001", VOC_CLASSES[:10]), ("000002", VOC_CLASSES[10:]))
}

COCO_IMAGES = {397133: (640, 427), 37777: (352, 230)}  # id: (width, height)
COCO_ANNOTATIONS = [  # image id, category id (COCO's own, with gaps), [x, y, w, h]
    (397133, 1, [388.66, 69.92, 109.41, 277.62]),  # person
    (397133, 1, [0.0, 262.81, 62.16, 36.77]),  # person
    (397133, 44, [217.62, 240.54, 38.99, 57.75]),  # bottle
    (37777, 18, [102.49, 118.47, 7.9, 17.31]),  # dog
    (37777, 62, [0.0, 141.0, 80.0, 89.0]),  # chair
]
COCO_NAMES = {c["id"]: c["name"] for c in COCO_CATEGORIES if c["isthing"]}


def write_voc(root: Path) -> None:
    voc = root / "VOC2007"
    for split, images in (("trainval", VOC_TRAINVAL), ("test", VOC_TEST)):
        write_voc_split(voc, split, images)
        for image_id, objects in images.items():
            write_voc_image(voc, image_id, objects, VOC_SIZE)


def write_coco(root: Path) -> None:
    images = [
        {
            "license": 1,
            "file_name": f"{i:012d}.jpg",
            "coco_url": "",
            "height": h,
            "width": w,
            "date_captured": "2013-11-14 17:02:52",
            "flickr_url": "",
            "id": i,
        }
        for i, (w, h) in COCO_IMAGES.items()
    ]
    annotations = []
    for index, (image_id, category_id, (x, y, w, h)) in enumerate(COCO_ANNOTATIONS):
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        annotations.append(
            {
                "segmentation": [polygon],
                "area": w * h,
                "iscrowd": 0,
                "image_id": image_id,
                "bbox": [x, y, w, h],
                "category_id": category_id,
                "id": 1000 + index,
            }
        )
    categories = [{"supercategory": "", "id": i, "name": name} for i, name in COCO_NAMES.items()]
    dataset = {
        "info": {"description": "kddet test fixture", "version": "1.0", "year": 2017},
        "licenses": [{"url": "", "id": 1, "name": "test"}],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "coco/annotations").mkdir(parents=True)
    (root / "coco/annotations/instances_val2017.json").write_text(json.dumps(dataset))
    for image in images:
        write_image(root / "coco/val2017" / image["file_name"], image["width"], image["height"])


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    """What tests/probe_builtin_datasets.py parsed and scored with DETECTRON2_DATASETS at the fixtures."""
    root, out = tmp_path_factory.mktemp("builtin_datasets"), tmp_path_factory.mktemp("probe")
    write_voc(root)
    write_coco(root)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/probe_builtin_datasets.py"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads((out / "probe.json").read_text())


def voc_objects(records):
    return {(Path(r["file_name"]).stem, a["class_name"], tuple(a["bbox"])) for r in records for a in r["annotations"]}


def test_voc_loader_parses_the_devkit_layout(probe, tmp_path_factory):
    trainval = probe["voc_2007_trainval"]
    assert trainval["evaluator_type"] == "pascal_voc"
    records = trainval["records"]
    assert [r["image_id"] for r in records] == ["000005", "000007"]
    assert all(r["file_name"].endswith(f"VOC2007/JPEGImages/{r['image_id']}.jpg") for r in records)
    assert all((r["width"], r["height"]) == VOC_SIZE for r in records)
    assert {a["bbox_mode"] for r in records for a in r["annotations"]} == {"XYXY_ABS"}
    # 1-based inclusive (xmin=1 .. xmax=W) becomes 0-based (0 .. W); difficult objects are kept.
    assert voc_objects(records) == {
        ("000005", "chair", (262.0, 210.0, 324.0, 339.0)),
        ("000005", "chair", (4.0, 243.0, 67.0, 374.0)),
        ("000007", "car", (140.0, 49.0, 500.0, 330.0)),
    }
    assert len(voc_objects(probe["voc_2007_test"]["records"])) == len(VOC_CLASSES)


def test_coco_loader_parses_instances_json(probe):
    val = probe["coco_2017_val"]
    assert val["evaluator_type"] == "coco"
    records = sorted(val["records"], key=lambda r: r["image_id"])
    assert [r["image_id"] for r in records] == [37777, 397133]
    assert records[0]["file_name"].endswith("coco/val2017/000000037777.jpg")
    assert (records[0]["width"], records[0]["height"]) == COCO_IMAGES[37777]
    parsed = {(r["image_id"], a["class_name"], tuple(a["bbox"])) for r in records for a in r["annotations"]}
    assert parsed == {(i, COCO_NAMES[c], tuple(box)) for i, c, box in COCO_ANNOTATIONS}
    assert {a["bbox_mode"] for r in records for a in r["annotations"]} == {"XYWH_ABS"}


@pytest.mark.parametrize(
    "dataset, evaluator", [("voc_2007_test", "PascalVOCDetectionEvaluator"), ("coco_2017_val", "COCOEvaluator")]
)
def test_evaluator_scores_the_ground_truth_perfect_and_a_misplaced_box_lower(probe, dataset, evaluator):
    perfect, misplaced = probe[dataset]["perfect"], probe[dataset]["misplaced"]
    assert perfect["evaluator"] == misplaced["evaluator"] == evaluator
    assert perfect["bbox"]["AP50"] == pytest.approx(100.0)
    assert perfect["bbox"]["AP"] == pytest.approx(100.0)
    assert 0 < misplaced["bbox"]["AP50"] < 99


def test_coco_evaluation_runs_without_the_compiled_evaluator(probe):
    assert probe["coco_2017_val"]["perfect"]["fast_impl"] is False


# The embedded shapes data set.


def test_shapes_splits_are_registered_with_coco_metadata(datasets_root):
    for split, spec in shapes.SPLITS.items():
        name = f"kddet_shapes_{split}"
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.evaluator_type == "coco"
        assert metadata.thing_classes == shapes.SHAPE_CLASSES
        records = DatasetCatalog.get(name)
        assert len(records) == spec.num_images
        assert Path(records[0]["file_name"]).is_relative_to(datasets_root / "kddet_shapes" / split)


@pytest.mark.parametrize("split", sorted(shapes.SPLITS))
def test_shapes_boxes_lie_inside_the_image_and_every_class_occurs(datasets_root, split):
    records = DatasetCatalog.get(f"kddet_shapes_{split}")
    size = shapes.IMAGE_SIZE
    classes = set()
    for record in records:
        assert (record["height"], record["width"]) == (size, size)
        for annotation in record["annotations"]:
            x0, y0, x1, y1 = annotation["bbox"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (record["file_name"], annotation)
            classes.add(annotation["category_id"])
    assert classes == set(range(len(shapes.SHAPE_CLASSES)))
    assert Image.open(records[0]["file_name"]).size == (size, size)


def test_shapes_generation_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setitem(shapes.SPLITS, "val", shapes.Split(num_images=12, seed=shapes.SPLITS["val"].seed))
    first = shapes.generate_split(tmp_path / "a", "val").parent
    second = shapes.generate_split(tmp_path / "b", "val").parent
    files = sorted(p.name for p in first.iterdir())
    assert len(files) == 13 and files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def generate_then_read(root, delay):
    time.sleep(delay)
    for record in shapes.load_shapes(root, "val"):
        Image.open(record["file_name"]).load()  # as training would, while later runs still write


def test_runs_that_generate_one_split_at_once_all_succeed_and_agree(tmp_path, monkeypatch):
    monkeypatch.setitem(shapes.SPLITS, "val", shapes.Split(num_images=40, seed=shapes.SPLITS["val"].seed))
    fork = multiprocessing.get_context("fork")  # the children see the patched split
    runs = [fork.Process(target=generate_then_read, args=(tmp_path / "shared", 0.05 * i)) for i in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert [run.exitcode for run in runs] == [0] * len(runs)
    alone = shapes.generate_split(tmp_path / "alone", "val").parent
    shared = tmp_path / "shared/val"
    files = sorted(p.name for p in alone.iterdir())
    assert files == sorted(p.name for p in shared.iterdir())  # no partial files left behind
    for name in files:
        assert (shared / name).read_bytes() == (alone / name).read_bytes(), name


def test_shapes_ground_truth_scores_perfect_with_the_coco_evaluator(datasets_root, tmp_path):
    evaluator = build_evaluator(get_cfg(), "kddet_shapes_val", str(tmp_path))
    evaluator.reset()
    records = DatasetCatalog.get("kddet_shapes_val")[:20]
    for record in records:
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(
            torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32).reshape(-1, 4)
        )
        instances.scores = torch.ones(len(instances.pred_boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.int64)
        evaluator.process([record], [{"instances": instances}])
    result = evaluator.evaluate(img_ids=[r["image_id"] for r in records])
    assert result["bbox"]["AP"] == pytest.approx(100.0)


# VOC-layout folders with images of other formats (kddet.data.register_voc_folder).

FOLDER_IMAGES = {  # id: (extension, (width, height), objects); PNG and JPEG sources mixed
    "img_a": (".png", (96, 64), [("thing", (11, 21, 40, 50), 0), ("thing", (50, 5, 90, 30), 0)]),
    "img_b": (".jpg", (64, 80), [("thing", (1, 1, 64, 80), 0)]),
    "img_c": (".PNG", (72, 72), [("thing", (30, 30, 60, 70), 1)]),
}


@pytest.fixture
def voc_folder(tmp_path) -> Path:
    for image_id, (ext, size, objects) in FOLDER_IMAGES.items():
        write_voc_image(tmp_path, image_id, objects, size, ext)
    write_voc_split(tmp_path, "val", FOLDER_IMAGES)
    (tmp_path / "JPEGImages/notes.txt").write_text("not an image")
    return tmp_path


def test_voc_folder_finds_each_image_whatever_its_extension(voc_folder):
    register_voc_folder("kddet_test_voc_folder_mixed", str(voc_folder), "val", 2012, ["thing"])
    metadata = MetadataCatalog.get("kddet_test_voc_folder_mixed")
    assert (metadata.evaluator_type, metadata.thing_classes, metadata.year, metadata.split) == (
        "pascal_voc",
        ["thing"],
        2012,
        "val",
    )
    records = DatasetCatalog.get("kddet_test_voc_folder_mixed")
    assert [Path(r["file_name"]).name for r in records] == ["img_a.png", "img_b.jpg", "img_c.PNG"]
    for record in records:
        ext, (width, height), objects = FOLDER_IMAGES[record["image_id"]]
        image = detection_utils.read_image(record["file_name"], format="BGR")
        assert image.shape == (height, width, 3) == (record["height"], record["width"], 3)
        boxes = [tuple(a["bbox"]) for a in record["annotations"]]
        assert boxes == [(x0 - 1.0, y0 - 1.0, x1, y1) for _, (x0, y0, x1, y1), _ in objects]


def test_voc_folder_with_one_extension_given(voc_folder):
    (voc_folder / "JPEGImages/img_b.jpg").rename(voc_folder / "JPEGImages/img_b.png")
    (voc_folder / "JPEGImages/img_c.PNG").rename(voc_folder / "JPEGImages/img_c.png")
    records = load_voc_folder(str(voc_folder), "val", ["thing"], image_ext="png")
    assert all(Path(r["file_name"]).is_file() and r["file_name"].endswith(".png") for r in records)
    assert load_voc_folder(str(voc_folder), "val", ["thing"], image_ext=".png") == records


def test_voc_folder_names_the_image_it_cannot_find_or_tell_apart(voc_folder):
    (voc_folder / "JPEGImages/img_b.jpg").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 of the 3 ids in ImageSets/Main/val.txt have no image in .* \(e.g. \['img_b'\]\)"
    ):
        load_voc_folder(str(voc_folder), "val", ["thing"])
    write_image(voc_folder / "JPEGImages/img_a.jpg", 8, 8)
    with pytest.raises(ValueError, match=r"two images of id 'img_a' \(img_a.jpg, img_a.png\).*pass image_ext"):
        load_voc_folder(str(voc_folder), "val", ["thing"])


def test_voc_folder_of_pngs_scores_its_ground_truth_perfect(voc_folder):
    register_voc_folder("kddet_test_voc_folder_scored", str(voc_folder), "val", 2007, ["thing"])
    evaluator = build_evaluator(get_cfg(), "kddet_test_voc_folder_scored")
    assert type(evaluator) is PascalVOCDetectionEvaluator
    evaluator.reset()
    for record in DatasetCatalog.get("kddet_test_voc_folder_scored"):
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in record["annotations"]]))
        instances.scores = torch.ones(len(instances))
        instances.pred_classes = torch.zeros(len(instances), dtype=torch.int64)
        evaluator.process([record], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100.0)
