"""kddet: knowledge distillation for Faster R-CNN detectors on detectron2."""
from . import warning_filters  # noqa: F401  (before detectron2's modeling code warns on import)
from . import compat  # noqa: F401  (must run before detectron2's layers are imported)
from . import modeling  # noqa: F401  (registers the meta-architecture and backbone)
from .config import add_kddet_config, load_config
from .data.shapes import register_shapes

register_shapes()

__all__ = ["add_kddet_config", "load_config"]
