"""Detections drawn with detectron2's ``Visualizer``: one model's on an image, and a teacher's and a
student's side by side on the same images."""

from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from .config import load_config
from .export import Predictor, load_detector, student_state

__all__ = ["metadata_of", "draw_detections", "side_by_side", "draw_side_by_side"]

TITLE_HEIGHT = 24


def metadata_of(cfg: CfgNode) -> Metadata:
    """The metadata (class names) of the config's first test set, or of its first training set."""
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0]) if names else Metadata()


def draw_detections(image: np.ndarray, instances: Instances, metadata: Metadata, scale: float = 1.0) -> np.ndarray:
    """``instances`` (pred_boxes, scores, pred_classes) drawn on ``image`` (HxWx3 uint8 RGB), labelled
    with the metadata's class names; an RGB array ``scale`` times the image's size."""
    visualizer = Visualizer(image, metadata, scale=scale)
    return visualizer.draw_instance_predictions(instances.to("cpu")).get_image()


def side_by_side(panels: List[np.ndarray], titles: List[str], gap: int = 8) -> np.ndarray:
    """RGB ``panels`` in a row, each under its title, ``gap`` white pixels apart."""
    height = max(p.shape[0] for p in panels) + TITLE_HEIGHT
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, title in zip(panels, titles):
        canvas.paste(Image.fromarray(panel), (x, TITLE_HEIGHT))
        draw.text((x + 4, 6), title, fill="black")
        x += panel.shape[1] + gap
    return np.asarray(canvas)


def _predictor(config: Union[str, Path], weights: Union[str, Path], device: str):
    cfg = load_config(config, ["MODEL.DEVICE", device])
    model = build_model(cfg).eval()
    if str(weights).endswith(".pth"):
        # A DistillationRCNN checkpoint holds the student with the losses' layers: keep the student's.
        model.load_state_dict(student_state(torch.load(weights, map_location="cpu", weights_only=False)))
    else:  # detectron2's .pkl and model-zoo names
        DetectionCheckpointer(model).load(str(weights))
    return cfg, Predictor(cfg, load_detector("pth", model))


def draw_side_by_side(
    teacher_config: Union[str, Path],
    teacher_weights: Union[str, Path],
    student_config: Union[str, Path],
    student_weights: Union[str, Path],
    output_dir: Union[str, Path],
    dataset: Optional[str] = None,
    num_images: int = 4,
    score_threshold: float = 0.5,
    scale: float = 3.0,
    device: str = "cpu",
) -> Path:
    """Write, for the first ``num_images`` images of ``dataset`` (default: the student config's first
    test set), ``output_dir/<image>.png``: the teacher's detections (score >= ``score_threshold``) left,
    the student's right, each ``scale`` times the image's size and titled with its number of
    detections. ``student_weights`` may be a DistillationRCNN checkpoint (its student is read) or an
    exported student. Return ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    models = {
        "teacher": _predictor(teacher_config, teacher_weights, device),
        "student": _predictor(student_config, student_weights, device),
    }
    student_cfg = models["student"][0]
    if not dataset and not student_cfg.DATASETS.TEST:
        raise ValueError(f"{student_config} names no test set (DATASETS.TEST): pass the data set to draw.")
    dataset = dataset or student_cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    for record in DatasetCatalog.get(dataset)[:num_images]:
        panels, titles = [], []
        for name, (cfg, predictor) in models.items():
            image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
            with torch.no_grad():
                instances = predictor([image])[0]
            instances = instances[instances.scores >= score_threshold]
            panels.append(draw_detections(convert_image_to_rgb(image, cfg.INPUT.FORMAT), instances, metadata, scale))
            titles.append(f"{name}: {len(instances)} detections")
        Image.fromarray(side_by_side(panels, titles)).save(output_dir / f"{Path(record['file_name']).stem}.png")
    return output_dir
