"""kddet: knowledge distillation for Faster R-CNN detectors on detectron2.

Tools and tests start with ``kddet.setup()``. Importing kddet applies detectron2's compatibility
shims too, as its own modules import detectron2's; it registers no data set.
"""

from . import warning_filters  # noqa: F401  (before detectron2's modeling code warns on import)
from .compat import apply_shims

apply_shims()  # before the imports below import detectron2's layers

from . import modeling  # noqa: E402,F401  (registers the meta-architecture and backbone)
from .config import add_kddet_config, load_config  # noqa: E402
from .data import register_shapes  # noqa: E402

__all__ = ["add_kddet_config", "load_config", "setup"]


def setup() -> None:
    """What every tool and test does first: detectron2's compatibility shims (``kddet.compat``) and
    kddet's embedded data set registered (``kddet.data``: ``kddet_shapes_train`` and ``_val``).
    Data sets a config names in ``DATASETS.REGISTER`` are registered when ``load_config`` reads it."""
    apply_shims()
    register_shapes()
