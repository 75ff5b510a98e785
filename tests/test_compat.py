"""kddet.compat: the Python-only detectron2 build runs on today's numpy/Pillow, says how to get
the compiled kernels when one is called, and the shims stay out of the way of a full build."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import detectron2
from detectron2 import model_zoo
from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

from kddet import compat

ALIASES = {"bool": bool, "int": int, "float": float, "str": str, "object": object}


def test_the_installed_build_has_no_compiled_extension():
    assert compat.HAS_DETECTRON2_C is False
    assert isinstance(sys.modules["detectron2._C"], compat._MissingExtensionModule)


def test_calling_a_compiled_kernel_names_the_git_install():
    boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]]))
    with pytest.raises(RuntimeError, match="DETECTRON2_SOURCE=git"):
        pairwise_iou_rotated(boxes, boxes)  # detectron2's own caller of _C.box_iou_rotated
    with pytest.raises(RuntimeError, match="DETECTRON2_SOURCE=git"):
        detectron2._C.COCOevalAccumulate({}, {})


def test_the_stub_is_not_mistaken_for_a_module_with_dunders():
    assert not hasattr(detectron2._C, "__file__")  # what collect_env and importlib probe
    assert detectron2._C.has_cuda() is False


def test_removed_numpy_aliases_and_pillow_constant_are_back():
    for alias, builtin in ALIASES.items():
        assert getattr(np, alias) in (builtin, np.bool_), alias  # numpy 2 has np.bool again
    assert np.array([1, 0]).astype(np.bool).dtype == np.bool_  # as detectron2's VOC evaluator uses it
    assert Image.LINEAR == Image.BILINEAR


def test_model_zoo_config_files_resolve():
    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("faster_rcnn_R_50_FPN_1x.yaml")
    assert "MODEL" in open(path).read()


def _remove_shims(monkeypatch):
    monkeypatch.delitem(sys.modules, "detectron2._C")
    monkeypatch.delattr(detectron2, "_C")
    for alias in ("int", "float", "str", "object"):  # numpy 2 ships "bool" itself
        monkeypatch.delattr(np, alias)
    monkeypatch.delattr(Image, "LINEAR")


def test_apply_is_inert_when_detectron2_has_its_extension(monkeypatch):
    _remove_shims(monkeypatch)
    compat.apply_shims(has_extension=True)
    assert "detectron2._C" not in sys.modules
    assert not hasattr(detectron2, "_C")
    assert not any(alias in np.__dict__ for alias in ("int", "float", "str", "object"))
    assert not hasattr(Image, "LINEAR")


def test_apply_installs_every_shim_without_the_extension(monkeypatch):
    _remove_shims(monkeypatch)
    compat.apply_shims(has_extension=False)
    assert isinstance(sys.modules["detectron2._C"], compat._MissingExtensionModule)
    assert detectron2._C is sys.modules["detectron2._C"]
    assert all(np.__dict__[alias] is ALIASES[alias] for alias in ("int", "float", "str", "object"))
    assert Image.LINEAR == Image.BILINEAR


def test_pkg_resources_stand_in_finds_model_zoo_files(monkeypatch):
    """setuptools >= 81 has no pkg_resources; model_zoo.get_config_file needs resource_filename."""
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    compat._install_pkg_resources()
    path = sys.modules["pkg_resources"].resource_filename(
        "detectron2.model_zoo", "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    )
    assert open(path).read().startswith("_BASE_")


def test_importing_kddet_registers_no_data_set_and_setup_registers_kddets():
    code = (
        "import kddet\n"
        "from detectron2.data import DatasetCatalog\n"
        "assert 'kddet_shapes_train' not in DatasetCatalog.list()\n"
        "kddet.setup()\n"
        "kddet.setup()  # a second call changes nothing\n"
        "assert {'kddet_shapes_train', 'kddet_shapes_val'} <= set(DatasetCatalog.list())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
