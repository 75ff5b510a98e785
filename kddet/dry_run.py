"""``tools/train_net.py --check``: everything a training run would check before its first step,
reported at once and without a traceback, then the distillation summary with FLOPs.

The model is built as training builds it, and every data set in ``DATASETS.TEST`` is loaded and
checked as the trainer checks it before its first step. Where the teacher's weights are missing, a teacher of
the same config with random weights stands in, so that the losses, feature levels and anchors are
still checked; where ``MODEL.META_ARCHITECTURE`` ignores ``KD.LOSSES``, the recipe is checked as
the ``DistillationRCNN`` it was meant to be.
"""

import contextlib
import logging
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from .complexity import inference_gflops
from .evaluation import check_test_dataset
from .inherit import NOTHING_INHERITED, inheritance_plan
from .losses import losses_need_teacher
from .model_zoo import config_file, is_url, not_downloaded, weights_available
from .modeling import DistillationRCNN
from .recipe_checks import DISTILLATION_ARCH, distillation_problems, distillation_summary

__all__ = ["dry_run"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _kddet_warnings() -> Iterator[List[str]]:
    """The warnings kddet logs inside the block (e.g. a teacher checkpoint's unexpected keys)."""
    handler, kddet_logger = _Collect(), logging.getLogger("kddet")
    kddet_logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        kddet_logger.removeHandler(handler)


def _teacher_weights_missing(cfg: CfgNode) -> bool:
    return (
        cfg.MODEL.META_ARCHITECTURE == DISTILLATION_ARCH
        and losses_need_teacher(cfg)
        and config_file(cfg.KD.TEACHER.CONFIG_FILE) is not None
        and not weights_available(cfg.KD.TEACHER.WEIGHTS)
    )


def _student_weights_error(cfg: CfgNode) -> Optional[str]:
    weights = cfg.MODEL.WEIGHTS
    if not weights or is_url(weights) or os.path.isfile(weights):
        return None
    return (
        f"MODEL.WEIGHTS not found: '{weights}' (the student's initial weights, loaded before the first step). "
        'Provide the file, or set MODEL.WEIGHTS "" to start from random weights.'
    )


def _test_dataset_errors(cfg: CfgNode) -> List[str]:
    """Why each data set of ``DATASETS.TEST`` that training would refuse cannot be evaluated or loaded."""
    errors = []
    for dataset_name in cfg.DATASETS.TEST:
        try:
            check_test_dataset(cfg, dataset_name)
        except ValueError as error:
            errors.append(str(error))
        except OSError as error:  # a file the loader needs is missing or unreadable
            errors.append(
                f"Data set '{dataset_name}' in DATASETS.TEST could not be loaded ({type(error).__name__}: {error}). "
                "Put its files where its registration reads them (detectron2's builtin data sets: under "
                "$DETECTRON2_DATASETS, see datasets/README.md), or remove it from DATASETS.TEST."
            )
    return errors


def _gflops(cfg: CfgNode, model: nn.Module) -> Dict[str, float]:
    """GFLOPs of one inference of student and teacher on a random image of the student's test
    size (square, ``INPUT.MIN_SIZE_TEST`` capped at ``INPUT.MAX_SIZE_TEST``)."""
    side = min(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0)) * 255
    model.eval()
    networks = {"student": model, "teacher": getattr(model, "teacher", None)}
    with torch.no_grad():
        return {name: inference_gflops(net, image) for name, net in networks.items() if net is not None}


def dry_run(cfg: CfgNode, flops: bool = True) -> Tuple[str, int]:
    """The report of ``tools/train_net.py --check`` on ``cfg`` and its number of errors: the
    distillation summary (with FLOPs unless ``flops`` is False), then every error and warning."""
    errors, warnings = distillation_problems(cfg)
    build_cfg = cfg.clone()
    build_cfg.MODEL.DEVICE = "cpu"  # the settings are checked the same on any device
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        warnings.append(f"MODEL.DEVICE is {cfg.MODEL.DEVICE}, which this machine lacks; the check ran on the CPU.")
    if cfg.KD.LOSSES and cfg.MODEL.META_ARCHITECTURE != DISTILLATION_ARCH:
        build_cfg.MODEL.META_ARCHITECTURE = DISTILLATION_ARCH  # already an error above; check the rest
    model = None
    with _kddet_warnings() as logged:
        try:
            if _teacher_weights_missing(build_cfg):
                weights = cfg.KD.TEACHER.WEIGHTS
                random_teacher = "(The rest was checked with a teacher of random weights.)"
                if is_url(weights):  # an online run downloads it
                    warnings.append(f"{not_downloaded(weights, 'KD.TEACHER.WEIGHTS')} {random_teacher}")
                else:
                    errors.append(
                        f"Teacher weights not found: '{weights}'. Set KD.TEACHER.WEIGHTS to the teacher's checkpoint. "
                        + random_teacher
                    )
                model = DistillationRCNN(build_cfg, load_teacher_weights=False)
            else:
                model = build_model(build_cfg)
        except (ValueError, FileNotFoundError) as error:
            if str(error) not in errors:  # an unknown loss name stops the build too
                errors.append(str(error))
        errors += _test_dataset_errors(cfg)
    warnings += logged
    student_weights = _student_weights_error(cfg)
    if student_weights:
        errors.append(student_weights)
    if is_url(cfg.MODEL.WEIGHTS) and not weights_available(cfg.MODEL.WEIGHTS):
        warnings.append(not_downloaded(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"))

    lines = [distillation_summary(cfg, model, _gflops(cfg, model) if flops and model is not None else None)]
    if cfg.KD.TEACHER.INIT_STUDENT and model is not None:  # what training would copy: names and shapes only
        try:
            inheritance = inheritance_plan(model)
        except ValueError as error:
            errors.append(str(error))
        else:
            lines.append(inheritance.describe())
            if not inheritance.copied:
                warnings.append(NOTHING_INHERITED)
    lines += [f"ERROR: {error}" for error in errors] + [f"WARNING: {warning}" for warning in warnings]
    verdict = "ready to train" if not errors else "fix the errors before training"
    lines.append(f"{len(errors)} error(s), {len(warnings)} warning(s): {verdict}.")
    return "\n".join(lines), len(errors)
