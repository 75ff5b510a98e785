"""kddet's additions to the detectron2 config.

The student is the ordinary ``MODEL.*`` of a config. The teacher is named by its own config
file and weights under ``KD.TEACHER``; nothing of detectron2's defaults is copied here.
``KD.LOSSES`` lists the distillation losses to switch on, by registered name; each loss reads
its own node ``KD.<NAME>`` (weight, the feature levels it reads, its options).
"""
from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .data.from_config import register_config_datasets
from .modeling.mobilenet_v2 import add_mobilenet_v2_config

__all__ = ["add_kddet_config", "load_config"]


def load_config(path: str, opts: Sequence = (), register_datasets: bool = True) -> CN:
    """detectron2's defaults with kddet's nodes, then the file at ``path``, then ``opts``
    (KEY VALUE ...); not frozen. The data sets of its ``DATASETS.REGISTER`` are registered unless
    ``register_datasets`` is False (a teacher's config: its data sets are never read)."""
    cfg = get_cfg()
    add_kddet_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    if register_datasets:
        register_config_datasets(cfg)
    return cfg


def add_kddet_config(cfg: CN) -> None:
    """Add kddet's config nodes to a detectron2 config, in place."""
    # A small ResNet of basic blocks with free widths/depths, for CPU-sized teachers and
    # students (the embedded data set); real recipes use detectron2's own ResNets.
    cfg.MODEL.SLIM_RESNET = CN()
    cfg.MODEL.SLIM_RESNET.STAGE_CHANNELS = [64, 128, 256, 512]
    cfg.MODEL.SLIM_RESNET.BLOCKS_PER_STAGE = [2, 2, 2, 2]
    # MobileNetV2 under an FPN, a student that starts from torchvision's ImageNet weights.
    add_mobilenet_v2_config(cfg)

    # The user's own data sets, registered by load_config (kddet/data/from_config.py): one node per
    # data set, named as DATASETS.TRAIN/TEST name it. A node per name reads in yaml as the data
    # sets themselves do, where parallel lists would have to be kept in step by hand.
    cfg.DATASETS.REGISTER = CN(new_allowed=True)

    # The student's weights and input in channels_last (NHWC) memory format: same values, another
    # layout, which some devices convolve faster (kddet/modeling/memory_format.py).
    cfg.MODEL.CHANNELS_LAST = False

    cfg.KD = CN()
    cfg.KD.TEACHER = CN()
    cfg.KD.TEACHER.CONFIG_FILE = ""
    cfg.KD.TEACHER.WEIGHTS = ""
    # How the frozen teacher computes, whatever SOLVER.AMP does for the student: "fp32", or autocast
    # to "bf16" / "fp16", or "auto" (bf16 where the CPU or GPU has it, else fp16 on a GPU, else fp32).
    # Its records reach the losses in fp32 either way.
    cfg.KD.TEACHER.PRECISION = "fp32"
    cfg.KD.TEACHER.CHANNELS_LAST = False  # the teacher's weights and input in channels_last (NHWC)
    cfg.KD.LOSSES = []
    # Loss-scale balancing (kddet/balance.py): each loss is measured for ITERS iterations in which
    # it acts (zeroed meanwhile), then held at RATIO times the detector's own losses, whatever its
    # configured WEIGHT. LOSSES: the KD.LOSSES names to balance; empty balances all of them.
    cfg.KD.BALANCE = CN()
    cfg.KD.BALANCE.ENABLED = False
    cfg.KD.BALANCE.RATIO = 0.5
    cfg.KD.BALANCE.ITERS = 20
    cfg.KD.BALANCE.LOSSES = []

    # FitNets hints (Romero et al. 2015): 1/2 mean (F_T - r(F_S))^2, mean over IN_FEATURES.
    cfg.KD.FITNET = CN()
    cfg.KD.FITNET.WEIGHT = 1.0
    cfg.KD.FITNET.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.FITNET.ADAPTER = "conv1x1"  # or "conv3x3"
    cfg.KD.FITNET.STANDARDIZE_TARGET = False  # True: regress each teacher channel standardised (PKD's norm)

    # Feature level beyond FitNets. WEIGHT is the paper's lambda / beta where it has one.
    # FGFI (Wang et al. 2019): hints only where the student's anchors match a GT box.
    cfg.KD.FGFI = CN()
    cfg.KD.FGFI.WEIGHT = 0.01  # the paper's lambda
    cfg.KD.FGFI.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]  # levels that carry RPN anchors
    cfg.KD.FGFI.ADAPTER = "conv3x3"
    cfg.KD.FGFI.PSI = 0.5  # a box's threshold is PSI * its best anchor IoU
    cfg.KD.FGFI.MAX_IOU_PER_LEVEL = False  # True: the best IoU of each level, not of all levels
    cfg.KD.FGFI.WARMUP_ITERS = 400  # the term is zeroed before this iteration (official code)
    cfg.KD.FGFI.STANDARDIZE_TARGET = False  # as KD.FITNET.STANDARDIZE_TARGET
    cfg.KD.FGFI.FULL_MAP = False  # True: imitate every location, the masks' ablation at equal weight
    # NST (Huang & Wang 2017): MMD between channel distributions; widths may differ.
    cfg.KD.NST = CN()
    cfg.KD.NST.WEIGHT = 1.0
    cfg.KD.NST.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.NST.KERNEL = "polynomial"  # or "linear", "gaussian"
    cfg.KD.NST.POLY_DEGREE = 2
    cfg.KD.NST.POLY_CONSTANT = 0.0
    # Attention transfer (Zagoruyko & Komodakis 2017): spatial maps sum_c |F_c|^P.
    cfg.KD.AT = CN()
    cfg.KD.AT.WEIGHT = 1.0
    cfg.KD.AT.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.AT.P = 2.0
    # OFD (Heo et al. 2019): margin ReLU teacher, 1x1 conv + BN student, partial L2. FPN outputs
    # have no BN to read the margins from, so they are running means of the teacher's negatives.
    cfg.KD.OFD = CN()
    cfg.KD.OFD.WEIGHT = 1.0
    cfg.KD.OFD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.OFD.MARGIN_MOMENTUM = 0.01
    # Activation boundaries (Heo et al. 2019): the sign of the teacher's responses, with a margin.
    cfg.KD.AB = CN()
    cfg.KD.AB.WEIGHT = 1.0
    cfg.KD.AB.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.AB.MARGIN = 1.0
    # FSP (Yim et al. 2017): Gram matrices between consecutive levels of IN_FEATURES.
    cfg.KD.FSP = CN()
    cfg.KD.FSP.WEIGHT = 1.0
    cfg.KD.FSP.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # PKD (Cao et al. 2022): MSE of per-channel standardised maps.
    cfg.KD.PKD = CN()
    cfg.KD.PKD.WEIGHT = 1.0
    cfg.KD.PKD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # CWD (Shu et al. 2021): KL between per-channel spatial softmaxes at TAU, times TAU^2.
    cfg.KD.CWD = CN()
    cfg.KD.CWD.WEIGHT = 1.0
    cfg.KD.CWD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.KD.CWD.TAU = 1.0

    # Head level, Chen et al. 2017. Soft classification, RPN (binary) and RoI head (K+1):
    # mu * detectron2's hard loss + (1 - mu) * class-weighted soft cross-entropy at TEMPERATURE.
    for name in ("RPNSOFTCLS", "RCNSOFTCLS"):
        cfg.KD[name] = CN()
        cfg.KD[name].MU = 0.5
        cfg.KD[name].TEMPERATURE = 1.0
        cfg.KD[name].BACKGROUND_WEIGHT = 1.5  # w_bg; object classes weigh 1
    # Teacher-bounded L2 regression on foreground rows, added to detectron2's smooth-L1 with
    # WEIGHT (nu); zero where the student beats the teacher by more than MARGIN (m).
    for name in ("RPNBOUNDEDREG", "RCNBOUNDEDREG"):
        cfg.KD[name] = CN()
        cfg.KD[name].WEIGHT = 0.5
        cfg.KD[name].MARGIN = 0.0

    # KD (Hinton et al. 2015) on the RoI head's class scores: tau^2 KL at TEMPERATURE.
    cfg.KD.KD = CN()
    cfg.KD.KD.WEIGHT = 1.0
    cfg.KD.KD.TEMPERATURE = 4.0
    # Teacher-free virtual teacher (Yuan et al. 2020): CORRECT_PROB on the true class (background
    # for background RoIs), the rest spread evenly; no teacher network.
    cfg.KD.VIRTUALTEACHER = CN()
    cfg.KD.VIRTUALTEACHER.WEIGHT = 1.0
    cfg.KD.VIRTUALTEACHER.TEMPERATURE = 1.0
    cfg.KD.VIRTUALTEACHER.CORRECT_PROB = 0.9

    # Relation level, on the box-head features of the shared proposals, per image.
    cfg.KD.PKT = CN()
    cfg.KD.PKT.WEIGHT = 1.0
    cfg.KD.SP = CN()
    cfg.KD.SP.WEIGHT = 3000.0  # Tung & Mori's gamma
    cfg.KD.RKD = CN()
    cfg.KD.RKD.DISTANCE_WEIGHT = 1.0  # the official code's dist_ratio / angle_ratio
    cfg.KD.RKD.ANGLE_WEIGHT = 2.0
    cfg.KD.RKD.ANGLE_MAX_ROIS = 128  # the angle term is cubic in the RoIs of an image
