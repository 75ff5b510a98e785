#!/usr/bin/env python
"""Strip a DistillationRCNN checkpoint down to the student, and write the student's config.

    python tools/export_student.py output/shapes/fitnet/model_final.pth output/shapes/fitnet/student.pth
    python tools/train_net.py --config-file output/shapes/fitnet/student.yaml --eval-only

tools/train_net.py saves the student together with the distillation losses' own layers (the
adapters under ``kd_losses.``, the balanced weights under ``kd_balancer.``) and the optimizer,
scheduler and iteration it would resume from. The exported file holds the student's weights
only, so that the student's plain GeneralizedRCNN config loads it with no missing or unexpected
keys. The teacher is never in the checkpoint.

Beside the weights (``student.pth`` -> ``student.yaml``) goes the run's config (its
``config.yaml``, or ``--config-file``) as the plain student's: GeneralizedRCNN, no ``KD`` node,
``MODEL.WEIGHTS`` the exported file. ``kddet.load_config`` reads it; so does detectron2's own
``get_cfg().merge_from_file`` when the backbone is detectron2's.

``--format torchscript`` or ``onnx`` also writes the student traced to TorchScript (``student.ts``) or
ONNX (``student.onnx``, run by onnxruntime) beside them (kddet/export.py), then checks that the
exported model finds on the parity images what the PyTorch student finds: the same number of
detections, each with a counterpart of the same class whose box corners lie within 0.1 px and whose
score within 0.001. The parity images are ``--parity-images`` (files or folders), else the first four
of the config's first test set, else, when that cannot be read, random images of the test size (said
so: a trained detector finds little on them). An export that fails the check is deleted.

    python tools/export_student.py output/shapes/fitnet/model_final.pth output/shapes/fitnet/student.pth --format onnx
    python tools/predict.py --config output/shapes/fitnet/student.yaml --weights output/shapes/fitnet/student.onnx \
        --input datasets/kddet_shapes/val --output output/predictions
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import BACKBONE_REGISTRY, build_model

from kddet.config import load_config
from kddet.engine import student_only
from kddet.export import (
    BOX_TOLERANCE,
    FORMATS,
    SCORE_TOLERANCE,
    SUFFIXES,
    ExportError,
    ParityError,
    Predictor,
    check_parity,
    export_model,
    image_files,
    load_detector,
    student_state,
)

PARITY_IMAGES = 4


def student_config(cfg: CfgNode, weights: Path) -> CfgNode:
    """The plain student's config from a run's: GeneralizedRCNN, no ``KD`` node, ``MODEL.WEIGHTS``
    the student's exported weights; the keys kddet adds to detectron2's nodes (``MODEL.SLIM_RESNET``,
    ``DATASETS.REGISTER``, ``DATALOADER.SEED``, ...) only where the backbone is kddet's, whose config
    detectron2 cannot read anyway."""
    cfg = student_only(cfg).clone()
    cfg.defrost()
    del cfg["KD"]
    if not BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME).__module__.startswith("kddet."):
        # then detectron2's get_cfg() reads the file as it is (inference needs no data set)
        _keep_detectron2_keys(cfg, get_cfg())
    cfg.MODEL.WEIGHTS = str(weights.resolve())
    return cfg


def _keep_detectron2_keys(cfg: CfgNode, defaults: CfgNode) -> None:
    """Delete from ``cfg``, at every depth, the keys that detectron2's ``defaults`` do not have."""
    for key in set(cfg) - set(defaults):
        del cfg[key]
    for key, value in cfg.items():
        if isinstance(value, CfgNode) and isinstance(defaults[key], CfgNode):
            _keep_detectron2_keys(value, defaults[key])


def export_student(
    source: Path,
    target: Path,
    config_file: Optional[Path] = None,
    force: bool = False,
    format: str = "pth",
    parity_images: Sequence[Path] = (),
) -> Dict[str, torch.Tensor]:
    """Write ``{"model": student weights}`` of ``source`` to ``target`` and the student's config
    (from ``config_file``, by default the ``config.yaml`` train_net wrote beside ``source``) to
    ``target`` with the suffix ``.yaml``; for ``format`` torchscript or onnx, the traced student too,
    beside with that format's suffix, checked against the PyTorch student (:func:`export_traced`).
    Return the weights."""
    target_config = target.with_suffix(".yaml")
    outputs = [target, target_config] + ([target.with_suffix(SUFFIXES[format])] if format != "pth" else [])
    for path in outputs:
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    state = student_state(torch.load(source, map_location="cpu"))
    config_file = config_file or source.parent / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"No config {config_file}: pass --config-file, the config {source} was trained with "
            "(tools/train_net.py writes it as config.yaml in OUTPUT_DIR)."
        )
    cfg = student_config(load_config(config_file), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, target)
    target_config.write_text(cfg.dump())
    if format != "pth":
        export_traced(target_config, target.with_suffix(SUFFIXES[format]), format, parity_images)
    return state


def parity_inputs(cfg: CfgNode, paths: Sequence[Path] = ()) -> List[torch.Tensor]:
    """The images the exported student is traced on and checked with, resized for test: ``paths``
    (files or folders), else the first PARITY_IMAGES of the config's first test set, else random
    images of the test size."""
    predictor = Predictor(cfg, None)
    if not paths:
        try:
            paths = [Path(d["file_name"]) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:PARITY_IMAGES]]
        except (IndexError, KeyError, OSError, AssertionError) as e:
            print(f"export_student: no test images to check with ({type(e).__name__}: {e}); random images instead")
            generator = np.random.default_rng(0)
            shape = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, 3)
            return [
                predictor.preprocess(generator.integers(0, 256, shape, dtype=np.uint8)) for _ in range(PARITY_IMAGES)
            ]
    return [predictor.preprocess(read_image(str(path), format=cfg.INPUT.FORMAT)) for path in image_files(paths)]


def export_traced(config_file: Path, target: Path, format: str, parity_images: Sequence[Path] = ()) -> int:
    """Build the plain student of ``config_file`` with its weights on the CPU, trace it to ``target``
    in ``format`` and check parity on the parity images (:func:`parity_inputs`); return the number of
    detections compared. A failed check deletes ``target`` and raises ParityError."""
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    images = parity_inputs(cfg, parity_images)
    export_model(model, images[:1], target, format)
    try:
        compared = check_parity(load_detector("pth", model), load_detector(format, target), images)
    except ParityError as e:
        target.unlink()
        raise ParityError(f"{target} detects otherwise than the PyTorch student, deleted: {e}") from e
    if compared:
        print(
            f"Parity: {target} finds the PyTorch student's {compared} detections on {len(images)} images "
            f"(boxes within {BOX_TOLERANCE} px, scores within {SCORE_TOLERANCE}, same classes)"
        )
    else:
        print(
            f"Parity: NOTHING was compared, the student detects nothing on the {len(images)} parity images above "
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST; pass --parity-images with images it detects objects on."
        )
    return compared


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model_final.pth of a DistillationRCNN run")
    parser.add_argument(
        "output", type=Path, help="where to write the student's weights (its config goes beside, .yaml)"
    )
    parser.add_argument("--config-file", type=Path, help="the run's config (default: config.yaml beside CHECKPOINT)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT and its config if they exist")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="pth",
        help="also trace the student to TorchScript (.ts) or ONNX (.onnx) beside OUTPUT, parity-checked",
    )
    parser.add_argument(
        "--parity-images",
        nargs="+",
        type=Path,
        default=(),
        help="images or folders to check the export on (default: the first 4 of the config's test set)",
    )
    args = parser.parse_args(argv)
    try:
        state = export_student(
            args.checkpoint, args.output, args.config_file, args.force, args.format, args.parity_images
        )
    except (FileExistsError, FileNotFoundError, ValueError, ExportError, ParityError) as e:
        print(f"export_student: {e}", file=sys.stderr)
        return 1
    config = args.output.with_suffix(".yaml")
    print(f"Wrote the student's {len(state)} tensors to {args.output} and its config to {config}")
    if args.format != "pth":
        print(f"Wrote the student in {args.format} to {args.output.with_suffix(SUFFIXES[args.format])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
