"""kddet.evaluation: which evaluator a data set gets, the up-front check of DATASETS.TEST, and the
warning when ground truth outnumbers TEST.DETECTIONS_PER_IMAGE."""
import itertools
import logging

import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from conftest import REPO, load_config
from kddet.data import shapes
from kddet.evaluation import build_evaluator, check_test_datasets

_names = (f"kddet_test_evaluation_{i}" for i in itertools.count())


def register(boxes_per_image=(1, 2), **metadata) -> str:
    """A data set of 64x64 images with the given numbers of boxes, under a name no test shared."""
    name = next(_names)
    records = [
        {
            "file_name": f"{i}.png", "image_id": i, "height": 64, "width": 64,
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
    assert f"1 of the 3 images of '{name}' have more ground-truth boxes than TEST.DETECTIONS_PER_IMAGE = 2" in warnings[0]
    assert "Raise TEST.DETECTIONS_PER_IMAGE to at least 3" in warnings[0]


def test_no_warning_when_the_cap_fits(kddet_log, tmp_path):
    name = register((2, 3, 1), thing_classes=["thing"])
    build_evaluator(cfg_with("TEST.DETECTIONS_PER_IMAGE", 3), name, str(tmp_path))
    assert not [r for r in kddet_log.records if r.levelno == logging.WARNING]


def test_the_shapes_configs_keep_every_object_the_generator_draws(datasets_root):
    cap = load_config(REPO / "configs/shapes/student_slim_r8.yaml").TEST.DETECTIONS_PER_IMAGE
    assert cap >= shapes.MAX_OBJECTS
    assert max(len(r["annotations"]) for r in DatasetCatalog.get("kddet_shapes_val")) <= shapes.MAX_OBJECTS
