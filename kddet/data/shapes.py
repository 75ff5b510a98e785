"""The embedded data set: procedurally drawn shapes, deterministic, built in seconds.

Six classes that differ in outline, size, aspect and texture (colour is random for every
object, so it is no cue), drawn over varied backgrounds with unlabelled clutter; objects may
occlude each other, and a box is the extent of what stays visible. Images and a json index are
written once under ``$DETECTRON2_DATASETS/kddet_shapes/<split>`` and reused.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["SHAPE_CLASSES", "SPLITS", "register_shapes", "generate_split", "load_shapes", "shapes_root"]

SHAPE_CLASSES = ["disk", "ring", "box", "bar", "triangle", "cross"]
IMAGE_SIZE = 128
MIN_VISIBLE_FRACTION = 0.4
MAX_OBJECTS = 5  # drawn per image; Base-Shapes.yaml's TEST.DETECTIONS_PER_IMAGE must not be lower
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Split:
    num_images: int
    seed: int


# val is quick to evaluate (demo, tests); the benchmark's pretrained student is read on test, ten
# times larger, as with 200 images a third of its seed-to-seed spread was evaluation noise.
SPLITS: Dict[str, Split] = {"train": Split(1000, 0), "val": Split(200, 1), "test": Split(2000, 2)}


def _texture(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Per-pixel intensity factor in [0.35, 1] for one object's fill."""
    period = rng.uniform(3.0, 6.0)
    if kind == "stripes":
        return 0.35 + 0.65 * ((xx + yy) // period % 2)
    if kind == "checker":
        return 0.35 + 0.65 * ((xx // period + yy // period) % 2)
    if kind == "dots":
        return np.where(((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < period, 0.35, 1.0)
    return np.ones_like(xx)  # solid


def _shape_mask(rng: np.random.Generator, name: str, yy: np.ndarray, xx: np.ndarray):
    """Boolean mask of one object of class ``name`` and its texture kind."""
    cy, cx = rng.uniform(8, IMAGE_SIZE - 8, size=2)
    if name == "disk":
        r = rng.uniform(9, 20)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2, "solid"
    if name == "ring":
        r = rng.uniform(11, 22)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2), "solid"
    if name == "box":
        half = rng.uniform(9, 20) * np.array([1.0, rng.uniform(0.8, 1.25)])
        return (np.abs(yy - cy) <= half[0]) & (np.abs(xx - cx) <= half[1]), "checker"
    if name == "bar":
        long_side, short_side = rng.uniform(16, 30), rng.uniform(4, 8)
        hy, hx = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        return (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx), "stripes"
    if name == "triangle":
        size = rng.uniform(12, 24)
        top, base = cy - size, cy + size * 0.8
        half_width = (yy - top) / (base - top) * size
        return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half_width), "solid"
    if name == "cross":
        arm, width = rng.uniform(9, 16), rng.uniform(2.5, 4.5)
        dy, dx = np.abs(yy - cy), np.abs(xx - cx)
        return ((dy <= arm) & (dx <= width)) | ((dx <= arm) & (dy <= width)), "dots"
    raise KeyError(name)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(40, 215, size=3)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / IMAGE_SIZE
        image = base + rng.uniform(-60, 60, size=3) * ramp[..., None]
    elif kind == 1:  # low-contrast stripes
        image = base + rng.uniform(10, 30) * np.sin(xx / rng.uniform(2, 8))[..., None]
    else:  # blotchy noise
        coarse = rng.normal(0, 25, size=(8, 8, 3))
        image = base + np.kron(coarse, np.ones((IMAGE_SIZE // 8, IMAGE_SIZE // 8, 1)))
    return image + rng.normal(0, 6, size=image.shape)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Unlabelled distractors: thin lines and specks smaller than any object."""
    for _ in range(rng.integers(2, 7)):
        color = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            cy, cx, r = *rng.uniform(0, IMAGE_SIZE, size=2), rng.uniform(1.5, 4)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            angle, offset = rng.uniform(0, np.pi), rng.uniform(-IMAGE_SIZE / 2, IMAGE_SIZE / 2)
            distance = np.cos(angle) * (xx - IMAGE_SIZE / 2) + np.sin(angle) * (yy - IMAGE_SIZE / 2) - offset
            mask = np.abs(distance) <= 0.8
        image[mask] = color


def _render(rng: np.random.Generator):
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    image = _background(rng, yy, xx)
    _draw_clutter(rng, image, yy, xx)
    owner = np.full((IMAGE_SIZE, IMAGE_SIZE), -1)
    classes, areas = [], []
    for index in range(rng.integers(1, MAX_OBJECTS + 1)):
        class_id = int(rng.integers(len(SHAPE_CLASSES)))
        mask, texture = _shape_mask(rng, SHAPE_CLASSES[class_id], yy, xx)
        color = rng.uniform(0, 255, size=3)
        image[mask] = color * _texture(rng, texture, yy, xx)[mask][:, None]
        owner[mask] = index  # later objects occlude earlier ones
        classes.append(class_id)
        areas.append(mask.sum())
    annotations = []
    for index, (class_id, area) in enumerate(zip(classes, areas)):
        ys, xs = np.nonzero(owner == index)
        if area == 0 or len(ys) < MIN_VISIBLE_FRACTION * area:
            continue
        annotations.append(
            {
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "bbox_mode": int(BoxMode.XYXY_ABS),
                "category_id": class_id,
            }
        )
    return np.clip(image, 0, 255).astype(np.uint8), annotations


def generate_split(root: Path, split: str) -> Path:
    """Write a split's PNGs and ``index.json`` under ``root/split``; return the index path.

    Every file is written under a name of this process's and then renamed into place, so runs that
    start together (``make results`` trains two at a time) may generate the same split at once: the
    content is the same, and none of them reads a half-written image or index."""
    spec = SPLITS[split]
    out_dir = root / split
    index_file = out_dir / "index.json"
    if index_file.exists() and json.loads(index_file.read_text()).get("version") == FORMAT_VERSION:
        return index_file
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    records = []
    for image_id in range(spec.num_images):
        image, annotations = _render(rng)
        file_name = out_dir / f"{image_id:05d}.png"
        partial = out_dir / f".{file_name.name}.{os.getpid()}"
        Image.fromarray(image).save(partial, format="PNG")
        partial.replace(file_name)
        records.append({"file_name": file_name.name, "image_id": image_id, "annotations": annotations})
    partial = out_dir / f".index.json.{os.getpid()}"
    partial.write_text(json.dumps({"version": FORMAT_VERSION, "images": records}))
    partial.replace(index_file)  # last: a split without its index is never taken as done
    return index_file


def load_shapes(root: Path, split: str) -> List[dict]:
    """detectron2 dataset dicts of one split, generating it first if needed."""
    index_file = generate_split(root, split)
    records = json.loads(index_file.read_text())["images"]
    return [
        dict(record, file_name=str(index_file.parent / record["file_name"]), height=IMAGE_SIZE, width=IMAGE_SIZE)
        for record in records
    ]


def shapes_root() -> Path:
    """Where the splits live: ``$DETECTRON2_DATASETS/kddet_shapes`` (read when a split is loaded)."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))) / "kddet_shapes"


def register_shapes() -> None:
    """Register ``kddet_shapes_train``, ``kddet_shapes_val`` and ``kddet_shapes_test`` (COCO-style evaluation)."""
    for split in SPLITS:
        name = f"kddet_shapes_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split: load_shapes(shapes_root(), split))
        MetadataCatalog.get(name).set(thing_classes=SHAPE_CLASSES, evaluator_type="coco")
