#!/usr/bin/env python
"""Strip a DistillationRCNN checkpoint down to the student.

    python tools/export_student.py output/shapes/fitnet/model_final.pth output/shapes/fitnet/student.pth
    python tools/train_net.py --config-file configs/shapes/student_slim_r8.yaml --eval-only \
        MODEL.WEIGHTS output/shapes/fitnet/student.pth

tools/train_net.py saves the student together with the distillation losses' own layers (the
adapters under ``kd_losses.``, the balanced weights under ``kd_balancer.``) and the optimizer,
scheduler and iteration it would resume from. The exported file holds the student's weights
only, so that the student's plain GeneralizedRCNN config loads it with no missing or unexpected keys. The teacher is never in the checkpoint.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict

import torch

DISTILLATION_PREFIXES = ("kd_losses.", "kd_balancer.")  # the losses' adapters, the balancer's scales


def student_state(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` entry of a detectron2 checkpoint without the distillation losses' parameters."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError("not a checkpoint saved by detectron2's DetectionCheckpointer (it has no 'model' entry)")
    return {k: v for k, v in checkpoint["model"].items() if not k.startswith(DISTILLATION_PREFIXES)}


def export_student(source: Path, target: Path, force: bool = False) -> Dict[str, torch.Tensor]:
    """Write ``{"model": student weights}`` of ``source`` to ``target``; return the weights."""
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")
    state = student_state(torch.load(source, map_location="cpu"))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, target)
    return state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="model_final.pth of a DistillationRCNN run")
    parser.add_argument("output", type=Path, help="where to write the student's weights")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)
    try:
        state = export_student(args.checkpoint, args.output, args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"export_student: {e}", file=sys.stderr)
        return 1
    print(f"Wrote the student's {len(state)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
