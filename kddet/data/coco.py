"""COCO-format json data sets, read with checks.

detectron2's ``load_coco_json`` reads any instances json; a wrong path, a missing image or a box
past its image's edge surface later as an I/O error in a loader worker or as a silently clipped
box. ``load_coco_checked`` stops before training with a message naming the file to fix.
"""

import os
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["load_coco_checked", "register_coco_checked"]

BOX_TOLERANCE = 1.0  # pixels; COCO's float boxes may end a rounding error past the edge


def load_coco_checked(
    json_file: str, image_root: str, dataset_name: str, class_names: Optional[Sequence[str]] = None
) -> List[dict]:
    """detectron2's dicts of ``json_file``, after checking that the images it names are in
    ``image_root``, that its boxes lie in their images and, given ``class_names``, that its
    categories (by id) have those names."""
    for path, what in ((json_file, "annotation json"), (image_root, "image root")):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No {what} {os.path.abspath(path)} for data set '{dataset_name}': correct the path."
            )
    records = load_coco_json(json_file, image_root, dataset_name)
    if not records:
        raise ValueError(f"{json_file} lists no images: data set '{dataset_name}' would be empty.")
    json_classes = MetadataCatalog.get(dataset_name).thing_classes  # load_coco_json sets them, ordered by id
    if class_names is not None and list(class_names) != json_classes:
        raise ValueError(
            f"The categories of {json_file} are {json_classes} (by id), not the classes {list(class_names)} given "
            f"for data set '{dataset_name}': give its categories' names in that order."
        )
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} images {json_file} lists are not in {image_root} "
            f"(e.g. {missing[:3]}): add them, or correct the image root or the images' file_name."
        )
    for record in records:
        for annotation in record["annotations"]:
            x, y, w, h = annotation["bbox"]  # load_coco_json keeps COCO's XYWH_ABS
            if not (
                -BOX_TOLERANCE <= x
                and -BOX_TOLERANCE <= y
                and w >= 0
                and h >= 0
                and x + w <= record["width"] + BOX_TOLERANCE
                and y + h <= record["height"] + BOX_TOLERANCE
            ):
                raise ValueError(
                    f"{json_file} has a box [x, y, w, h] = {[x, y, w, h]} outside its {record['width']}x"
                    f"{record['height']} image {record['file_name']}: correct it (COCO boxes are absolute pixels)."
                )
    return records


def register_coco_checked(
    name: str, json_file: str, image_root: str, class_names: Optional[Sequence[str]] = None
) -> None:
    """detectron2's ``register_coco_instances`` (same metadata, COCO evaluation) with the checks of
    :func:`load_coco_checked` when the data set is loaded."""
    DatasetCatalog.register(name, lambda: load_coco_checked(json_file, image_root, name, class_names))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
