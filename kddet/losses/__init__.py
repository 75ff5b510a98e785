"""Distillation losses; importing this package registers every one of them."""
from .build import (
    KD_LOSS_REGISTRY,
    DistillationBatch,
    build_kd_losses,
    check_feature_names,
    kd_loss_classes,
    losses_need_teacher,
    weighted,
)
from .fitnet import FitNet
