"""Evaluators by the data set's ``evaluator_type``, as detectron2's train_net chooses them.

A detection data set that sets no ``evaluator_type`` (``register_pascal_voc`` and most user
registrations set none) is scored with COCO box AP: detectron2's COCOEvaluator converts any
registered detection data set. A data set in ``DATASETS.TEST`` that cannot be evaluated stops
training before the first iteration, not after the last, and ``tools/train_net.py --check`` reports it.
"""

import logging
import os
from typing import Set, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator

from .compat import HAS_DETECTRON2_C

__all__ = [
    "build_evaluator",
    "check_test_dataset",
    "check_test_datasets",
    "evaluator_type",
    "warn_if_detections_capped",
]

logger = logging.getLogger(__name__)

EVALUATOR_TYPES = ("coco", "pascal_voc")
_checked_caps: Set[Tuple[str, int]] = set()  # (data set, cap) pairs whose ground truth was compared


def evaluator_type(dataset_name: str) -> str:
    """``"coco"`` or ``"pascal_voc"``: the data set's own ``evaluator_type``, or ``"coco"`` for a
    detection data set (one with ``thing_classes``) that sets none. Raise ValueError naming the fix
    for a data set that is not registered or cannot be evaluated."""
    remedy = 'or remove it from DATASETS.TEST (DATASETS.TEST "()" trains without evaluating).'
    if dataset_name not in DatasetCatalog.list():
        raise ValueError(
            f"Data set '{dataset_name}' in DATASETS.TEST is not registered. Register it before training starts "
            f"(DatasetCatalog.register, detectron2's register_coco_instances, kddet.data.register_voc_folder), {remedy}"
        )
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("evaluator_type", None) is None and not metadata.get("thing_classes", None):
        # A data set registered lazily may set its metadata only as it loads (detectron2's
        # load_coco_json sets thing_classes then): load it before concluding that it has none.
        DatasetCatalog.get(dataset_name)
    kind = metadata.get("evaluator_type", None)
    if kind in EVALUATOR_TYPES:
        return kind
    if kind is not None:
        raise ValueError(
            f"Data set '{dataset_name}' has evaluator_type {kind!r}; kddet evaluates box detection, with 'coco' or "
            f"'pascal_voc' data sets. Set MetadataCatalog.get('{dataset_name}').evaluator_type to one of them, {remedy}"
        )
    if not metadata.get("thing_classes", None):
        raise ValueError(
            f"Data set '{dataset_name}' sets neither evaluator_type nor thing_classes, so it cannot be scored. Name "
            f"its classes (MetadataCatalog.get('{dataset_name}').set(thing_classes=[...])) for COCO box AP, {remedy}"
        )
    return "coco"


def warn_if_detections_capped(cfg: CfgNode, dataset_name: str) -> None:
    """Warn, once per data set, cap and process, when an image of the data set has more ground-truth
    boxes than the model may detect (``TEST.DETECTIONS_PER_IMAGE``): its recall, and so its AP,
    is capped without a word otherwise."""
    cap = cfg.TEST.DETECTIONS_PER_IMAGE
    if (dataset_name, cap) in _checked_caps:
        return
    counts = {
        record["file_name"]: sum(1 for a in record.get("annotations", ()) if not a.get("iscrowd", 0))
        for record in DatasetCatalog.get(dataset_name)
    }
    _checked_caps.add((dataset_name, cap))  # only once loaded: a set that failed to load is checked again
    over = {file_name: count for file_name, count in counts.items() if count > cap}
    if over:
        most = max(over, key=over.get)
        logger.warning(
            f"{len(over)} of the {len(counts)} images of '{dataset_name}' have more ground-truth boxes than "
            f"TEST.DETECTIONS_PER_IMAGE = {cap} (up to {over[most]}, in {most}); the detector keeps at most {cap} "
            f"per image, which caps recall and AP. Raise TEST.DETECTIONS_PER_IMAGE to at least {over[most]}."
        )


def check_test_dataset(cfg: CfgNode, dataset_name: str) -> None:
    """Raise if ``dataset_name`` cannot be evaluated (ValueError) or loaded (the loader's error),
    and warn if its ground truth outnumbers the detections the model may keep."""
    evaluator_type(dataset_name)
    warn_if_detections_capped(cfg, dataset_name)


def check_test_datasets(cfg: CfgNode) -> None:
    """Stop now if a data set in ``DATASETS.TEST`` cannot be evaluated, and warn about capped
    detections, rather than when training ends."""
    for dataset_name in cfg.DATASETS.TEST:
        check_test_dataset(cfg, dataset_name)


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
    """COCO AP for ``coco`` data sets and detection data sets without an ``evaluator_type``
    (pycocotools' COCOeval when the compiled fast evaluator is absent), VOC AP for ``pascal_voc``
    ones."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    kind = evaluator_type(dataset_name)
    warn_if_detections_capped(cfg, dataset_name)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("evaluator_type", None) is None:
        message = f"Data set '{dataset_name}' sets no evaluator_type: evaluating it with COCOEvaluator (COCO box AP)."
        if metadata.get("dirname", None) and metadata.get("split", None):  # register_pascal_voc's metadata
            message += f" Set MetadataCatalog.get('{dataset_name}').evaluator_type = 'pascal_voc' for VOC AP."
        logger.info(message)
    return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=HAS_DETECTRON2_C)
