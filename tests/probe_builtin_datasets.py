"""Load detectron2's builtin VOC 2007 and COCO 2017 val splits and score them with kddet's evaluators;
write what was parsed and scored to OUTPUT_DIR/probe.json.

detectron2 registers the builtin names under $DETECTRON2_DATASETS when it is imported, so
tests/test_datasets.py runs this in a subprocess with that variable pointing at its fixtures:

    DETECTRON2_DATASETS=ROOT python tests/probe_builtin_datasets.py OUTPUT_DIR
"""

import json
import sys

import torch

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from kddet.evaluation import build_evaluator


def ground_truth_as_predictions(record: dict) -> Instances:
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.ones(len(boxes))
    instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.int64)
    return instances


def one_box_misplaced(record: dict) -> Instances:
    """The ground truth, except that each image's first box moves right by twice its width (IoU 0)."""
    instances = ground_truth_as_predictions(record)
    box = instances.pred_boxes.tensor[0]
    box[[0, 2]] += 2 * (box[2] - box[0])
    return instances


def score(dataset_name: str, output_dir: str, predict) -> dict:
    evaluator = build_evaluator(get_cfg(), dataset_name, output_dir)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        evaluator.process([record], [{"instances": predict(record)}])
    return {
        "evaluator": type(evaluator).__name__,
        "fast_impl": getattr(evaluator, "_use_fast_impl", None),
        "bbox": evaluator.evaluate()["bbox"],
    }


def parsed(dataset_name: str) -> dict:
    records = DatasetCatalog.get(dataset_name)
    classes = MetadataCatalog.get(dataset_name).thing_classes
    for record in records:
        for annotation in record["annotations"]:
            annotation["class_name"] = classes[annotation["category_id"]]
            annotation["bbox_mode"] = BoxMode(annotation["bbox_mode"]).name
    return {"evaluator_type": MetadataCatalog.get(dataset_name).evaluator_type, "records": records}


def main(output_dir: str) -> None:
    result = {name: parsed(name) for name in ("voc_2007_trainval", "voc_2007_test", "coco_2017_val")}
    for name in ("voc_2007_test", "coco_2017_val"):
        result[name]["perfect"] = score(name, f"{output_dir}/{name}_perfect", ground_truth_as_predictions)
        result[name]["misplaced"] = score(name, f"{output_dir}/{name}_misplaced", one_box_misplaced)
    with open(f"{output_dir}/probe.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
