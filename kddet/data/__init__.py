"""kddet's data sets (registered by ``kddet.setup()`` and ``load_config``): the embedded shapes,
VOC-layout folders with images of any format, COCO jsons read with checks, and the data sets a
config's ``DATASETS.REGISTER`` names."""

from .coco import load_coco_checked, register_coco_checked
from .from_config import register_config_datasets
from .shapes import register_shapes
from .voc import load_voc_folder, register_voc_folder

__all__ = [
    "load_coco_checked",
    "load_voc_folder",
    "register_coco_checked",
    "register_config_datasets",
    "register_shapes",
    "register_voc_folder",
]
