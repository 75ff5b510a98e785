"""The trainer and config set-up shared by tools/train_net.py and the demo."""

import logging
import os
from unittest import mock

from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_setup, defaults
from detectron2.engine.defaults import create_ddp_model as detectron2_create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import load_config
from .data.fixed_stream import build_fixed_train_loader
from .evaluation import build_evaluator, check_test_datasets
from .inherit import inherit_from_teacher
from .modeling.memory_format import use_channels_last
from .recipe_checks import check_distillation, distillation_summary

__all__ = ["Trainer", "check_resumable", "create_ddp_model", "divergence_hint", "setup_cfg", "student_only"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer, with the evaluator chosen by data set type (checked before the
    first iteration), divergence errors that say what to change, and a student on the CPU trainable
    in several processes."""

    def __init__(self, cfg: CfgNode):
        check_test_datasets(cfg)  # evaluation runs after training: a test set it cannot score stops the run now
        # DefaultTrainer.__init__ wraps the model with detectron2's create_ddp_model, which passes a
        # CPU model device_ids that DDP rejects: while it builds, that call goes to ours.
        # find_unused_parameters stays False (no search of the graph every step): every parameter
        # reaches the loss at every step. The detector's own losses use all of the student, and a
        # loss with adapters that has nothing to add on a step returns its term times zero, not no
        # term (FGFI in warm-up, KD.BALANCE while measuring): DDP then finds every gradient it waits for.
        with mock.patch.object(defaults, "create_ddp_model", create_ddp_model):
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, built once the distillation settings pass ``check_distillation``,
        in channels_last with ``MODEL.CHANNELS_LAST``; the log gets the distillation summary
        (parameters only: ``tools/train_net.py --check`` adds FLOPs)."""
        check_distillation(cfg)
        model = super().build_model(cfg)
        if cfg.MODEL.CHANNELS_LAST:
            use_channels_last(model)
        logger.info("%s", distillation_summary(cfg, model))
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's loader, its data stream seeded by ``DATALOADER.SEED`` when that is set."""
        return super().build_train_loader(cfg) if cfg.DATALOADER.SEED < 0 else build_fixed_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def resume_or_load(self, resume=True):
        resuming = resume and self.checkpointer.has_checkpoint()
        if resuming:
            check_resumable(self.checkpointer)
        super().resume_or_load(resume=resume)
        if self.cfg.KD.TEACHER.INIT_STUDENT and not resuming:  # a resumed run holds what it inherited
            logger.info("%s", inherit_from_teacher(getattr(self.model, "module", self.model)).describe())

    def run_step(self):
        # detectron2 raises FloatingPointError when the RPN's boxes or the summed losses turn Inf/NaN,
        # the latter before the optimizer steps; checking here costs no extra device sync.
        try:
            super().run_step()
        except FloatingPointError as error:
            raise FloatingPointError(f"{error}\n{divergence_hint(self.cfg)}") from error


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model`` (the model itself in one process), for a model on the CPU
    too: detectron2 gives DistributedDataParallel ``device_ids=[local rank]``, which only a GPU
    model takes; a CPU model gets none."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    return detectron2_create_ddp_model(model, **kwargs)


def check_resumable(checkpointer: DetectionCheckpointer) -> None:
    """Stop, naming the file to blame and what to do, if ``last_checkpoint`` or the checkpoint it
    names cannot be read (a disk that filled up, a copy cut short): detectron2 would raise an
    EOFError, a KeyError or a zip reader's error that says neither. Reads the checkpoint once more
    than resuming does."""
    record = os.path.join(checkpointer.save_dir, "last_checkpoint")
    record_fix = (
        f"delete it to start again from MODEL.WEIGHTS, or write into it the name of a good model_*.pth of "
        f"{checkpointer.save_dir}"
    )
    try:
        path = checkpointer.get_checkpoint_file()
    except UnicodeDecodeError as error:
        raise RuntimeError(f"Cannot resume: {record} is damaged (not text); {record_fix}.") from error
    if not os.path.isfile(path):
        raise RuntimeError(f"Cannot resume: {record} names {path}, which is not a file; {record_fix}.")
    try:
        checkpointer._load_file(path)
    except Exception as error:
        raise RuntimeError(
            f"Cannot resume from {path}, named by {record}: the file is damaged ({type(error).__name__}, see "
            f"the error above). Delete it and write the name of an earlier model_*.pth into {record} (or "
            "delete that too, to start again from MODEL.WEIGHTS), or point MODEL.WEIGHTS at a good checkpoint "
            "and run without --resume (iterations then restart at 0)."
        ) from error


def divergence_hint(cfg: CfgNode) -> str:
    """What to change when training with ``cfg`` diverges."""
    if not cfg.KD.LOSSES:
        return "Training diverged: lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS."
    nodes = ", ".join(f"KD.{name.upper()}" for name in cfg.KD.LOSSES)
    return (
        f"Training diverged with distillation losses on ({nodes}). A distillation term that outweighs the "
        "detector's own losses can do this: lower the weight in its node, or SOLVER.BASE_LR, or lengthen "
        "SOLVER.WARMUP_ITERS."
    )


def setup_cfg(args) -> CfgNode:
    """detectron2's config from ``--config-file`` and opts, with kddet's nodes added first."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup gives detectron2's and fvcore's loggers the console and log.txt; kddet's lines
    # (the teacher it loaded, the losses that are on, how a data set is evaluated) go there too.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="kddet")
    return cfg


def student_only(cfg: CfgNode) -> CfgNode:
    """The config of the student alone. Evaluation needs no teacher: a DistillationRCNN in eval mode
    returns exactly what its student returns, so a recipe is evaluated without loading a teacher
    (the checkpoint's adapter weights are left unused)."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN":
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg
