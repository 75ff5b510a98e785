"""Evaluators by the data set's ``evaluator_type``, as detectron2's train_net chooses them."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator

from .compat import HAS_DETECTRON2_C

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
    """COCO AP for ``coco`` data sets (pycocotools' COCOeval when the compiled fast evaluator is
    absent), VOC AP for ``pascal_voc`` ones."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=HAS_DETECTRON2_C)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise NotImplementedError(
        f"No evaluator for data set '{dataset_name}' (evaluator_type={evaluator_type!r}); kddet evaluates "
        "'coco' and 'pascal_voc' data sets."
    )
