"""Data sets in the PASCAL VOC devkit layout, read with checks, whose images need not be ``.jpg``.

detectron2's VOC loader names every image ``JPEGImages/<id>.jpg``, fails on a split file of one
line (``np.loadtxt`` returns a 0-d array) and stops with a bare ``ValueError`` on a class it was
not given. ``load_voc_folder`` reads the same layout into the same dicts, finds each image whatever
its extension (or takes one for all), and stops on a missing file, an unknown class, a box outside
its image, a coordinate that is not an integer (detectron2's VOC evaluator reads them with ``int``,
so it would fail only once training is over) or an empty split with a message naming the file to
fix. detectron2's builtin VOC names (``voc_2007_trainval``, ...) are left as they are.
"""

import os
import re
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

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


def _split_ids(dirname: str, split: str) -> List[str]:
    """The image ids of ``ImageSets/Main/<split>.txt``, one per line."""
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(
            f"No split file {split_file}: a VOC folder lists the image ids of split '{split}' there, one per line."
        )
    with open(split_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"{split_file} lists no image ids: write the ids of split '{split}' in it, one per line.")
    return ids


def _line_of(xml_file: str, tag: str, text: str) -> str:
    """The suffix ', line N' naming the line of the first ``<tag>text</tag>`` in ``xml_file``; empty
    if the element spans lines."""
    element = re.compile(rf"<{tag}>\s*{re.escape(text)}\s*</{tag}>")
    with open(xml_file) as f:
        for number, line in enumerate(f, 1):
            if element.search(line):
                return f", line {number}"
    return ""


def _integer(xml_file: str, tree: ET.Element, path: str) -> int:
    """The integer at ``path`` of the annotation; ValueError naming the file, the line and the fix
    when it is not written as one."""
    text = (tree.findtext(path) or "").strip()
    try:
        return int(text)
    except ValueError:
        tag = path.rsplit("/", 1)[-1]
        raise ValueError(
            f"{xml_file}{_line_of(xml_file, tag, text)}: <{tag}> is '{text}', not an integer. VOC annotations give "
            "sizes and boxes in whole pixels (1-based), and detectron2's VOC evaluator reads them as integers: "
            "round the value in the file (a converter that writes floats should round them)."
        ) from None


def _read_annotation(xml_file: str, class_names: Sequence[str]) -> dict:
    """One image's size and boxes (0-based XYXY; VOC's are 1-based inclusive pixel indices, so
    xmin=1, xmax=W covers the whole image); difficult objects are kept, as detectron2 keeps them."""
    if not os.path.isfile(xml_file):
        raise FileNotFoundError(f"No annotation {xml_file}: write it, or remove its id from the split file.")
    tree = ET.parse(xml_file)
    width, height = _integer(xml_file, tree, "./size/width"), _integer(xml_file, tree, "./size/height")
    annotations = []
    for obj in tree.findall("object"):
        name = obj.findtext("name").strip()
        if name not in class_names:
            raise ValueError(
                f"{xml_file} has an object of class '{name}', which is not among the classes {list(class_names)}: "
                "add it to the class list, or correct the name in the file."
            )
        x0, y0, x1, y1 = (_integer(xml_file, obj, f"bndbox/{side}") for side in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height):
            raise ValueError(
                f"{xml_file} has a '{name}' box (xmin {x0:g}, ymin {y0:g}, xmax {x1:g}, ymax {y1:g}) outside its "
                f"{width}x{height} image (VOC boxes are 1-based pixel indices, 1 <= xmin <= xmax <= width): correct it."
            )
        annotations.append(
            {
                "category_id": class_names.index(name),
                "bbox": [x0 - 1.0, y0 - 1.0, float(x1), float(y1)],
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    return {"height": height, "width": width, "annotations": annotations}


def load_voc_folder(
    dirname: str, split: str, class_names: Sequence[str], image_ext: Optional[str] = None
) -> List[dict]:
    """detectron2's dicts of ``ImageSets/Main/<split>.txt`` under ``dirname``, each naming the
    image ``JPEGImages/<id><image_ext>``, or, with ``image_ext`` None, the image of that id the
    folder holds, whatever its extension."""
    image_dir = os.path.join(dirname, "JPEGImages")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"No image folder {image_dir}: a VOC folder keeps its images in JPEGImages/.")
    ids = _split_ids(dirname, split)
    if image_ext is not None:
        ext = image_ext if image_ext.startswith(".") else f".{image_ext}"
        files = {i: f"{i}{ext}" for i in ids if os.path.isfile(os.path.join(image_dir, f"{i}{ext}"))}
    else:
        files = _image_files(image_dir)
    missing = [i for i in ids if i not in files]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(ids)} ids in ImageSets/Main/{split}.txt have no image in {image_dir} "
            f"(e.g. {missing[:3]}); add the images, or remove their ids from {split}.txt."
        )
    class_names = list(class_names)
    return [
        dict(
            _read_annotation(os.path.join(dirname, "Annotations", f"{i}.xml"), class_names),
            file_name=os.path.join(image_dir, files[i]),
            image_id=i,
        )
        for i in ids
    ]


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
