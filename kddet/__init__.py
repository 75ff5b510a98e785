"""kddet: knowledge distillation for Faster R-CNN detectors on detectron2."""
from . import compat  # noqa: F401  (must run before detectron2's layers are imported)
