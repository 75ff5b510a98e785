"""The trainer and config set-up shared by tools/train_net.py and the demo."""
import logging

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import load_config
from .evaluation import build_evaluator, check_test_datasets
from .validation import check_distillation, distillation_summary

__all__ = ["Trainer", "divergence_hint", "setup_cfg", "student_only"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer, with the evaluator chosen by data set type (checked before the
    first iteration) and divergence errors that say what to change."""

    def __init__(self, cfg: CfgNode):
        check_test_datasets(cfg)  # evaluation runs after training: a test set it cannot score stops the run now
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model, built once the distillation settings pass ``check_distillation``;
        the log gets their summary (parameters only: ``tools/train_net.py --check`` adds FLOPs)."""
        check_distillation(cfg)
        model = super().build_model(cfg)
        logger.info("%s", distillation_summary(cfg, model))
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def run_step(self):
        # detectron2 raises FloatingPointError when the RPN's boxes or the summed losses turn Inf/NaN,
        # the latter before the optimizer steps; checking here costs no extra device sync.
        try:
            super().run_step()
        except FloatingPointError as error:
            raise FloatingPointError(f"{error}\n{divergence_hint(self.cfg)}") from error


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
