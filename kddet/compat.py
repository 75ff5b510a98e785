"""Shims that let the Python-only detectron2 0.6 build run on today's numpy, Pillow and setuptools.

Everything here is inert when detectron2 was built with its C++ extension (a git install):
such a build is recent enough not to need any of it. ``apply_shims()`` must run before any
``detectron2.layers`` / ``detectron2.data`` import: ``kddet.setup()``, which tools and tests call
first, runs it, and so does ``import kddet`` (kddet's modules import detectron2's).
"""

import importlib.util
import sys
import types

import numpy as np
from PIL import Image

__all__ = ["HAS_DETECTRON2_C", "apply_shims"]

HAS_DETECTRON2_C: bool = importlib.util.find_spec("detectron2._C") is not None


def _missing_extension(*_args, **_kwargs):
    raise RuntimeError(
        "This detectron2 is the Python-only build, without the compiled detectron2._C: "
        "deformable convolution, rotated boxes and the fast COCO evaluator are unavailable. "
        "Install detectron2 from its git repository (DETECTRON2_SOURCE=git "
        "scripts/setup_env.sh) to use them."
    )


class _MissingExtensionModule(types.ModuleType):
    """Stands in for ``detectron2._C`` so that modules importing it at top level still load;
    calling anything from it raises an error that says how to get the real extension."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing_extension


def _install_pkg_resources() -> None:
    # model_zoo.get_config_file uses pkg_resources.resource_filename; setuptools >= 81 dropped it.
    from importlib.resources import files

    module = types.ModuleType("pkg_resources")
    module.resource_filename = lambda package, resource: str(files(package).joinpath(resource))
    sys.modules["pkg_resources"] = module


def apply_shims(has_extension: bool = HAS_DETECTRON2_C) -> None:
    """Install the shims, unless detectron2 has its compiled extension (``has_extension``); a second
    call changes nothing."""
    if has_extension:
        return
    import detectron2

    stub = _MissingExtensionModule("detectron2._C")
    # What collect_env_info() (logged by default_setup) asks of the extension.
    stub.get_compiler_version = stub.get_cuda_version = lambda: "none (Python-only detectron2 build)"
    stub.has_cuda = lambda: False
    sys.modules.setdefault("detectron2._C", stub)
    detectron2._C = sys.modules["detectron2._C"]
    # Removed aliases that detectron2 0.6 still uses (pascal_voc loader and evaluator, ...).
    for alias, builtin in {"bool": bool, "int": int, "float": float, "str": str, "object": object}.items():
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
    if not hasattr(Image, "LINEAR"):  # default argument evaluated when transforms import
        Image.LINEAR = Image.BILINEAR
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        _install_pkg_resources()
