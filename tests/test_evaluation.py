"""kddet.evaluation: which evaluator a data set gets, the up-front check of DATASETS.TEST, and the
warning when ground truth outnumbers TEST.DETECTIONS_PER_IMAGE."""

import itertools
import logging

import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from conftest import REPO, STUDENT_CONFIG, load_config, write_coco_instances
from kddet.data import shapes
from kddet.evaluation import build_evaluator, check_test_datasets

_names = (f"kddet_test_evaluation_{i}" for i in itertools.count())


def register(boxes_per_image=(1, 2), **metadata) -> str:
    """A data set of 64x64 images with the given numbers of boxes, under a name no test shared."""
    name = next(_names)
    records = [
        {
            "file_name": f"{i}.png",
            "image_id": i,
            "height": 64,
            "width": 64,
            "annotations": [{"bbox": [j, j, j + 8, j + 8], "bbox_mode": 0, "category_id": 0} for j in range(count)],
        }
        for i, count in enumerate(boxes_per_image)
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**metadata)
    return name


@pytest.fixture
def kddet_log(caplog, monkeypatch):
    """kddet's records, INFO and up: setup_cfg (in another test) may have stopped them propagating."""
    monkeypatch.setattr(logging.getLogger("kddet"), "propagate", True)
    caplog.set_level(logging.INFO, logger="kddet")
    return caplog


def cfg_with(*opts):
    cfg = get_cfg()
    cfg.merge_from_list(list(opts))
    return cfg


def test_a_detection_data_set_without_evaluator_type_gets_the_coco_evaluator_and_the_log_says_so(kddet_log, tmp_path):
    name = register(thing_classes=["thing"])
    evaluator = build_evaluator(cfg_with(), name, str(tmp_path))
    assert type(evaluator) is COCOEvaluator
    assert f"Data set '{name}' sets no evaluator_type: evaluating it with COCOEvaluator" in kddet_log.text


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({}, "sets neither evaluator_type nor thing_classes"),
        ({"thing_classes": ["thing"], "evaluator_type": "sem_seg"}, "has evaluator_type 'sem_seg'"),
    ],
)
def test_a_data_set_that_cannot_be_evaluated_is_refused_with_the_fix(metadata, message, tmp_path):
    name = register(**metadata)
    with pytest.raises(ValueError, match=message) as error:
        build_evaluator(cfg_with(), name, str(tmp_path))
    assert "remove it from DATASETS.TEST" in str(error.value)


def test_the_check_names_a_test_set_that_is_not_registered():
    with pytest.raises(ValueError, match="'no_such_set' in DATASETS.TEST is not registered"):
        check_test_datasets(cfg_with("DATASETS.TEST", ("no_such_set",)))


def test_more_ground_truth_than_detections_per_image_warns_once_naming_the_key(kddet_log, tmp_path):
    name = register((2, 3, 1), thing_classes=["thing"])
    cfg = cfg_with("TEST.DETECTIONS_PER_IMAGE", 2)
    check_test_datasets(cfg)  # nothing in DATASETS.TEST yet
    cfg.DATASETS.TEST = (name,)
    check_test_datasets(cfg)
    build_evaluator(cfg, name, str(tmp_path))
    build_evaluator(cfg, name, str(tmp_path))
    warnings = [r.getMessage() for r in kddet_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    expected = f"1 of the 3 images of '{name}' have more ground-truth boxes than TEST.DETECTIONS_PER_IMAGE = 2"
    assert expected in warnings[0]
    assert "Raise TEST.DETECTIONS_PER_IMAGE to at least 3" in warnings[0]


def test_no_warning_when_the_cap_fits(kddet_log, tmp_path):
    name = register((2, 3, 1), thing_classes=["thing"])
    build_evaluator(cfg_with("TEST.DETECTIONS_PER_IMAGE", 3), name, str(tmp_path))
    assert not [r for r in kddet_log.records if r.levelno == logging.WARNING]


def test_the_shapes_configs_keep_every_object_the_generator_draws(datasets_root):
    cap = load_config(REPO / "configs/shapes/student_slim_r8.yaml").TEST.DETECTIONS_PER_IMAGE
    assert cap >= shapes.MAX_OBJECTS
    assert max(len(r["annotations"]) for r in DatasetCatalog.get("kddet_shapes_val")) <= shapes.MAX_OBJECTS


def test_a_data_set_that_sets_its_metadata_as_it_loads_is_evaluated(tmp_path):
    """A lazy registration (detectron2's load_coco_json names the classes only when it runs): the
    metadata is read after loading, not taken as missing before."""
    name = next(_names)
    records = [{"file_name": "0.png", "image_id": 0, "height": 64, "width": 64, "annotations": []}]

    def load():
        MetadataCatalog.get(name).set(thing_classes=["thing"])
        return records

    DatasetCatalog.register(name, load)
    assert not MetadataCatalog.get(name).get("thing_classes", None)
    check_test_datasets(cfg_with("DATASETS.TEST", (name,)))
    assert type(build_evaluator(cfg_with(), name, str(tmp_path))) is COCOEvaluator


def test_a_coco_json_of_the_config_without_classes_is_checked_and_evaluated(tmp_path):
    """DATASETS.REGISTER's COCO data set takes its classes from the json, when it is loaded."""
    name = next(_names)
    json_file, image_root = tmp_path / "instances.json", tmp_path / "images"
    write_coco_instances(json_file, image_root, {"a.jpg": (64, 48)}, [("a.jpg", 3, [1.0, 2.0, 20.0, 30.0])], {3: "cat"})
    config = tmp_path / "config.yaml"
    config.write_text(
        f'_BASE_: "{STUDENT_CONFIG}"\nDATASETS:\n  REGISTER:\n'
        f'    {name}: {{FORMAT: "coco", JSON_FILE: "{json_file}", IMAGE_ROOT: "{image_root}"}}\n'
        f"  TEST: ('{name}',)\n"
    )
    cfg = load_config(config)
    check_test_datasets(cfg)
    assert MetadataCatalog.get(name).thing_classes == ["cat"]
    assert type(build_evaluator(cfg, name, str(tmp_path))) is COCOEvaluator


def test_a_test_set_that_failed_to_load_is_loaded_again_by_the_next_check(kddet_log, tmp_path):
    name = next(_names)
    attempts = []

    def load():
        attempts.append(1)
        if len(attempts) == 1:
            raise FileNotFoundError("not there yet")
        return [{"file_name": "0.png", "height": 8, "width": 8, "annotations": [{"bbox": [0, 0, 2, 2]}] * 3}]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=["thing"], evaluator_type="coco")
    cfg = cfg_with("DATASETS.TEST", (name,), "TEST.DETECTIONS_PER_IMAGE", 2)
    with pytest.raises(FileNotFoundError):
        check_test_datasets(cfg)
    check_test_datasets(cfg)
    assert len(attempts) == 2 and f"1 of the 1 images of '{name}'" in kddet_log.text
