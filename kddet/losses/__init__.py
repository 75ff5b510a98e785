"""Distillation losses; importing this package registers every one of them."""

from .build import (
    KD_LOSS_REGISTRY,
    DistillationBatch,
    DistillationLoss,
    build_kd_losses,
    check_feature_names,
    kd_loss_classes,
    losses_need_teacher,
)
from .fitnet import FitNet
from .fgfi import FGFI
from .nst import NST
from .attention_transfer import AT
from .ofd import OFD
from .activation_boundaries import AB
from .fsp import FSP
from .pkd import PKD
from .cwd import CWD
from .rpn_soft_cls import RPNSoftCls
from .rcn_soft_cls import RCNSoftCls
from .rpn_bounded_reg import RPNBoundedReg
from .rcn_bounded_reg import RCNBoundedReg
from .kd import KD
from .virtual_teacher import VirtualTeacher
from .pkt import PKT
from .sp import SP
from .rkd import RKD
from .review_kd import ReviewKD
from .dkd import DKD
from .fgd import FGD
from .mgd import MGD
from .fbkd import FBKD
