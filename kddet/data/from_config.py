"""Data sets named in a config's ``DATASETS.REGISTER``, registered when ``kddet.load_config``
reads it, so that every tool sees the same data sets without a launcher of its own.

Each sub-node of ``DATASETS.REGISTER`` is one data set, under its name::

    DATASETS:
      REGISTER:
        my_train: {FORMAT: "voc", DIRNAME: "data/my_voc", SPLIT: "train", CLASSES: ["cat", "dog"]}
        my_val: {FORMAT: "coco", JSON_FILE: "data/val.json", IMAGE_ROOT: "data/val_images"}
      TRAIN: ("my_train",)
      TEST: ("my_val",)

Registration reads no file (a config loads on a machine without the data); the files are checked
when a data set is loaded, before the first training step. Paths are relative to the working
directory, like every other path in a config.
"""

from typing import Dict, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from .coco import register_coco_checked
from .voc import register_voc_folder

__all__ = ["DATASET_KEYS", "add_register_config", "register_config_datasets"]


def add_register_config(cfg: CfgNode) -> None:
    """``DATASETS.REGISTER``: one node per data set, named as DATASETS.TRAIN/TEST name it. A node per
    name reads in yaml as the data sets themselves do, where parallel lists would have to be kept
    in step by hand."""
    cfg.DATASETS.REGISTER = CfgNode(new_allowed=True)


# Per FORMAT: its required keys, and its optional keys with their defaults.
DATASET_KEYS: Dict[str, Tuple[Tuple[str, ...], Dict[str, object]]] = {
    "coco": (("JSON_FILE", "IMAGE_ROOT"), {"CLASSES": []}),  # CLASSES, if given, must be the json's (by id)
    # YEAR is the VOC metric's: 2007 scores the 11-point AP, any other year the area under the curve.
    # IMAGE_EXT "" finds each image's own extension in JPEGImages/.
    "voc": (("DIRNAME", "SPLIT", "CLASSES"), {"YEAR": 2012, "IMAGE_EXT": ""}),
}

_registered: Dict[str, dict] = {}  # name: the spec this process registered it with


def _spec(name: str, node: CfgNode) -> dict:
    """The data set's settings, defaults filled in; ValueError naming the key that is wrong."""
    key = f"DATASETS.REGISTER.{name}"
    if not isinstance(node, CfgNode):
        raise ValueError(f"{key} must be a node of settings (FORMAT, ...), not {node!r}.")
    kind = node.get("FORMAT")
    if kind not in DATASET_KEYS:
        raise ValueError(f"{key}.FORMAT is {kind!r}: set it to one of {sorted(DATASET_KEYS)}.")
    required, optional = DATASET_KEYS[kind]
    unknown = sorted(set(node) - {"FORMAT", *required, *optional})
    if unknown:
        keys = ["FORMAT", *required, *optional]
        raise ValueError(f"{key} has keys a {kind} data set does not read: {unknown}. Its keys: {keys}.")
    missing = [k for k in required if not node.get(k)]
    if missing:
        raise ValueError(f"{key} is a {kind} data set and needs {', '.join(f'{key}.{k}' for k in missing)}.")
    spec = dict(optional, **node)
    # yacs decodes the values of keys it knows, so detectron2 configs write tuples as strings;
    # these keys are new to it, so CLASSES ("a", "b") arrives as that string.
    classes = CfgNode._decode_cfg_value(spec["CLASSES"])
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f'{key}.CLASSES is {spec["CLASSES"]!r}: give the class names as a list, e.g. ["cat", "dog"].')
    spec["CLASSES"] = list(classes)
    return spec


def _register(name: str, spec: dict) -> None:
    classes = spec["CLASSES"] or None
    if spec["FORMAT"] == "coco":
        register_coco_checked(name, spec["JSON_FILE"], spec["IMAGE_ROOT"], classes)
    else:
        image_ext = spec["IMAGE_EXT"] or None
        register_voc_folder(name, spec["DIRNAME"], spec["SPLIT"], spec["YEAR"], classes, image_ext)


def register_config_datasets(cfg: CfgNode) -> None:
    """Register every data set of ``cfg.DATASETS.REGISTER``. Registering a name again with the
    same settings does nothing; other settings for a name already registered are an error."""
    for name, node in cfg.DATASETS.REGISTER.items():
        spec = _spec(name, node)
        if name in _registered:
            if _registered[name] != spec:
                raise ValueError(
                    f"DATASETS.REGISTER.{name} differs from the data set '{name}' already registered in this process "
                    f"({_registered[name]}): give it another name."
                )
            continue
        if name in DatasetCatalog.list():
            raise ValueError(
                f"DATASETS.REGISTER.{name}: a data set '{name}' is already registered (a detectron2 builtin, kddet's, "
                "or your code's): give yours another name."
            )
        _register(name, spec)
        _registered[name] = spec
