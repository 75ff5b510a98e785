#!/usr/bin/env python
"""Detect objects in images with a student (or any plain detectron2 model) in PyTorch, TorchScript or ONNX.

    python tools/predict.py --config output/shapes/fitnet/student.yaml --weights output/shapes/fitnet/student.onnx \\
        --input datasets/kddet_shapes/val --output output/predictions

For every image: ``OUTPUT/<image name>.png``, the detections with a score of at least
``--confidence-threshold`` drawn by detectron2's Visualizer, and a line with their number; then
``OUTPUT/detections.json``, all of them in COCO format (images, annotations with a ``score``,
categories), and the mean latency per image of the predictor (resize, model, boxes scaled back to the
image; the first image left out as warm-up). The config gives the test size, the channel order and the
class names; ``--weights`` a detectron2 checkpoint (default: the config's ``MODEL.WEIGHTS``) or a file
written by ``tools/export_student.py --format torchscript|onnx``, the format read from its suffix
unless ``--format`` says it.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from PIL import Image

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.modeling import build_model
from detectron2.structures import Instances

from kddet import load_config
from kddet.export import FORMATS, SUFFIXES, Predictor, image_files, load_detector
from kddet.visualize import draw_detections, metadata_of


def format_of(weights: Path) -> str:
    """The format a weights file's suffix names: .ts TorchScript, .onnx ONNX, else a checkpoint."""
    return {suffix: name for name, suffix in SUFFIXES.items()}.get(weights.suffix, "pth")


def coco_detections(files: List[Path], results: List[Instances], metadata) -> Dict:
    """Detections in COCO's format: images, annotations (XYWH boxes, ``score``), categories; category
    ids those of the data set where its metadata maps them, else the model's class ids."""
    classes = metadata.get("thing_classes", None)
    to_dataset_id = {v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    images, annotations = [], []
    for image_id, (file, instances) in enumerate(zip(files, results), start=1):
        height, width = instances.image_size
        images.append({"id": image_id, "file_name": file.name, "height": height, "width": width})
        for box, score, cls in zip(
            instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
        ):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": to_dataset_id.get(cls, cls),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "score": score,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": to_dataset_id.get(i, i), "name": name} for i, name in enumerate(classes or [])]
    return {"images": images, "annotations": annotations, "categories": categories}


def predict(
    config: Path,
    weights: Optional[Path],
    inputs: List[Path],
    output: Path,
    format: Optional[str] = None,
    confidence_threshold: float = 0.5,
    device: str = "cpu",
) -> List[int]:
    """Write the PNGs and detections.json of :mod:`tools.predict` to ``output``; return the number of
    detections of each image."""
    cfg = load_config(config, ["MODEL.DEVICE", device])
    weights = Path(weights or cfg.MODEL.WEIGHTS)
    format = format or format_of(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"no weights {weights}: pass --weights (a checkpoint, or an export of tools/export_student.py)"
        )
    if format == "pth":
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).load(str(weights))
        detector = load_detector("pth", model)
    else:
        detector = load_detector(format, weights, device=device)
    predictor = Predictor(cfg, detector)
    metadata = metadata_of(cfg)
    files = image_files(inputs)
    output.mkdir(parents=True, exist_ok=True)
    results, latencies, counts = [], [], []
    for file in files:
        image = read_image(str(file), format=cfg.INPUT.FORMAT)
        start = time.perf_counter()
        with torch.no_grad():
            instances = predictor([image])[0].to("cpu")
        latencies.append(time.perf_counter() - start)
        instances = instances[instances.scores >= confidence_threshold]
        results.append(instances)
        counts.append(len(instances))
        drawn = draw_detections(convert_image_to_rgb(image, cfg.INPUT.FORMAT), instances, metadata)
        Image.fromarray(drawn).save(output / f"{file.stem}.png")
        print(f"{file.name}: {len(instances)} detections")
    (output / "detections.json").write_text(json.dumps(coco_detections(files, results, metadata)))
    timed = latencies[1:] or latencies
    print(
        f"{len(files)} images, {sum(counts)} detections (score >= {confidence_threshold}), {format} on {device}: "
        f"mean latency {1000 * statistics.mean(timed):.1f} ms per image over {len(timed)} images; "
        f"drawings and detections.json in {output}"
    )
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the model's config (an exported student.yaml)")
    parser.add_argument("--weights", type=Path, help="checkpoint, .ts or .onnx (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--input", type=Path, nargs="+", required=True, help="images, or folders of images")
    parser.add_argument("--output", type=Path, required=True, help="folder for the drawings and detections.json")
    parser.add_argument("--format", choices=FORMATS, help="the weights' format (default: from their suffix)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="lowest score drawn and written")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        predict(args.config, args.weights, args.input, args.output, args.format, args.confidence_threshold, args.device)
    except FileNotFoundError as e:
        print(f"predict: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
