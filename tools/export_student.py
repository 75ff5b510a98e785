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
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import BACKBONE_REGISTRY

from kddet.config import load_config
from kddet.engine import student_only

DISTILLATION_PREFIXES = ("kd_losses.", "kd_balancer.")  # the losses' adapters, the balancer's scales


def student_state(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` entry of a detectron2 checkpoint without the distillation losses' parameters."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError("not a checkpoint saved by detectron2's DetectionCheckpointer (it has no 'model' entry)")
    return {k: v for k, v in checkpoint["model"].items() if not k.startswith(DISTILLATION_PREFIXES)}


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
    source: Path, target: Path, config_file: Optional[Path] = None, force: bool = False
) -> Dict[str, torch.Tensor]:
    """Write ``{"model": student weights}`` of ``source`` to ``target`` and the student's config
    (from ``config_file``, by default the ``config.yaml`` train_net wrote beside ``source``) to
    ``target`` with the suffix ``.yaml``; return the weights."""
    target_config = target.with_suffix(".yaml")
    for path in (target, target_config):
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
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model_final.pth of a DistillationRCNN run")
    parser.add_argument("output", type=Path, help="where to write the student's weights (its config goes beside, .yaml)")
    parser.add_argument("--config-file", type=Path, help="the run's config (default: config.yaml beside CHECKPOINT)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT and its config if they exist")
    args = parser.parse_args(argv)
    try:
        state = export_student(args.checkpoint, args.output, args.config_file, args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"export_student: {e}", file=sys.stderr)
        return 1
    print(f"Wrote the student's {len(state)} tensors to {args.output} and its config to {args.output.with_suffix('.yaml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
