"""Data sets in the PASCAL VOC devkit layout whose images are not all ``.jpg``.

detectron2's VOC loader reads ``Annotations/<id>.xml`` and names every image
``JPEGImages/<id>.jpg``. ``register_voc_folder`` registers such a folder with the images it has:
one extension for all, or, when none is given, each image's own (PNG and JPEG sources may mix).
detectron2's builtin VOC names (``voc_2007_trainval``, ...) are left as they are.
"""
import os
from typing import Dict, List, Optional, Sequence

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

__all__ = ["load_voc_folder", "register_voc_folder"]


def _image_files(image_dir: str) -> Dict[str, str]:
    """Image file names in ``image_dir`` by id (the name without its extension), for the
    extensions Pillow reads; an id with two images (``1.jpg``, ``1.png``) is ambiguous."""
    readable = set(Image.registered_extensions())
    files: Dict[str, str] = {}
    for file_name in sorted(os.listdir(image_dir)):
        image_id, ext = os.path.splitext(file_name)
        if ext.lower() not in readable:
            continue
        if image_id in files:
            raise ValueError(
                f"{image_dir} holds two images of id '{image_id}' ({files[image_id]}, {file_name}); "
                "keep one, or pass image_ext to choose the extension."
            )
        files[image_id] = file_name
    return files


def load_voc_folder(
    dirname: str, split: str, class_names: Sequence[str], image_ext: Optional[str] = None
) -> List[dict]:
    """detectron2's dicts of ``ImageSets/Main/<split>.txt`` under ``dirname``, each naming the
    image ``JPEGImages/<id><image_ext>``, or, with ``image_ext`` None, the image of that id the
    folder holds, whatever its extension."""
    image_dir = os.path.join(dirname, "JPEGImages")
    records = load_voc_instances(dirname, split, list(class_names))
    if image_ext is not None:
        ext = image_ext if image_ext.startswith(".") else f".{image_ext}"
        return [dict(r, file_name=os.path.join(image_dir, f"{r['image_id']}{ext}")) for r in records]
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"No image folder {image_dir}: a VOC folder keeps its images in JPEGImages/.")
    files = _image_files(image_dir)
    missing = [str(r["image_id"]) for r in records if r["image_id"] not in files]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} ids in ImageSets/Main/{split}.txt have no image in {image_dir} "
            f"(e.g. {missing[:3]}); add the images, or remove their ids from {split}.txt."
        )
    return [dict(r, file_name=os.path.join(image_dir, files[r["image_id"]])) for r in records]


def register_voc_folder(
    name: str,
    dirname: str,
    split: str,
    year: int,
    class_names: Sequence[str],
    image_ext: Optional[str] = None,
) -> None:
    """Register the VOC-layout folder ``dirname``'s ``split`` as data set ``name``, evaluated with
    detectron2's PascalVOCDetectionEvaluator (VOC 2007's 11-point AP when ``year`` is 2007).

    Args:
        image_ext: the extension of every image (".png" or "png"); None finds each image's own.
    """
    DatasetCatalog.register(name, lambda: load_voc_folder(dirname, split, class_names, image_ext))
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), dirname=dirname, year=year, split=split, evaluator_type="pascal_voc"
    )
