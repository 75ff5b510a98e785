"""kddet's additions to the detectron2 config.

The student is the ordinary ``MODEL.*`` of a config. The teacher is named by its own config
file and weights under ``KD.TEACHER``; nothing of detectron2's defaults is copied here.
``KD.LOSSES`` lists the distillation losses to switch on, by registered name; each loss reads
its own node ``KD.<NAME>`` (weight, the feature levels it reads, its options).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_kddet_config"]


def add_kddet_config(cfg: CN) -> None:
    """Add kddet's config nodes to a detectron2 config, in place."""
    # A small ResNet of basic blocks with free widths/depths, for CPU-sized teachers and
    # students (the embedded data set); real recipes use detectron2's own ResNets.
    cfg.MODEL.SLIM_RESNET = CN()
    cfg.MODEL.SLIM_RESNET.STAGE_CHANNELS = [64, 128, 256, 512]
    cfg.MODEL.SLIM_RESNET.BLOCKS_PER_STAGE = [2, 2, 2, 2]

    cfg.KD = CN()
    cfg.KD.TEACHER = CN()
    cfg.KD.TEACHER.CONFIG_FILE = ""
    cfg.KD.TEACHER.WEIGHTS = ""
    cfg.KD.LOSSES = []

    # FitNets hints (Romero et al. 2015): 1/2 mean (F_T - r(F_S))^2, mean over IN_FEATURES.
    cfg.KD.FITNET = CN()
    cfg.KD.FITNET.WEIGHT = 1.0
    cfg.KD.FITNET.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.FITNET.ADAPTER = "conv1x1"  # or "conv3x3"
