"""Teachers named the way detectron2's model zoo names them: a config name detectron2 ships, and
weights as a model-zoo .pkl, a detectron2:// URL in the download cache, or one that is not there."""

import pickle
import urllib.error

import pytest
import torch

from detectron2.modeling import build_model

from conftest import REPO, TEACHER_CONFIG, load_config
from kddet import model_zoo
from kddet.dry_run import dry_run
from kddet.teacher import build_teacher, load_teacher_config

FITNET_CONFIG = REPO / "configs/shapes/fitnet.yaml"
ZOO_TEACHER = "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
URL = "detectron2://kddet-test/shapes_teacher/model_final_000000.pkl"


def fitnet_cfg(teacher_config, weights, *opts):
    return load_config(
        FITNET_CONFIG, "KD.TEACHER.CONFIG_FILE", str(teacher_config), "KD.TEACHER.WEIGHTS", str(weights), *opts
    )


@pytest.fixture(scope="module")
def shapes_teacher():
    torch.manual_seed(3)
    return build_model(load_config(TEACHER_CONFIG)).state_dict()


def write_zoo_pkl(path, state, **fields):
    """A checkpoint as detectron2's model zoo and tools write .pkl files: numpy arrays under
    "model", detectron2's names, "__author__"."""
    model = {name: tensor.numpy() for name, tensor in state.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo", **fields}, f)


@pytest.fixture
def fvcore_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "fvcore_cache"))
    return tmp_path / "fvcore_cache"


@pytest.mark.parametrize("fields", [{}, {"matching_heuristics": True}])
def test_a_model_zoo_pkl_loads_every_tensor(tmp_path, shapes_teacher, fields):
    weights = tmp_path / "model_final.pkl"
    write_zoo_pkl(weights, shapes_teacher, **fields)
    teacher = build_teacher(fitnet_cfg(TEACHER_CONFIG, weights))
    loaded = teacher.state_dict()
    assert loaded.keys() == shapes_teacher.keys()
    assert all(torch.equal(loaded[name], shapes_teacher[name]) for name in shapes_teacher)


def test_a_pkl_matched_by_heuristics_is_still_loaded_strictly(tmp_path, shapes_teacher):
    state = dict(shapes_teacher)
    del state["roi_heads.box_predictor.cls_score.weight"]
    state["backbone.fpn_output2.weight"] = state["backbone.fpn_output2.weight"][:8]
    weights = tmp_path / "model_final.pkl"
    write_zoo_pkl(weights, state, matching_heuristics=True)
    with pytest.raises(
        ValueError,
        match=r"do not fit the teacher config: of its \d+ tensors, 1 are missing from the file "
        r"\(e.g. \['roi_heads.box_predictor.cls_score.weight'\]\) and 1 have another shape",
    ):
        build_teacher(fitnet_cfg(TEACHER_CONFIG, weights))


def test_detectron2_url_weights_load_from_the_download_cache(fvcore_cache, shapes_teacher):
    cached = fvcore_cache / "detectron2/kddet-test/shapes_teacher/model_final_000000.pkl"
    assert model_zoo.cached_file(URL) == str(cached)
    cached.parent.mkdir(parents=True)
    write_zoo_pkl(cached, shapes_teacher)
    teacher = build_teacher(fitnet_cfg(TEACHER_CONFIG, URL))
    assert torch.equal(
        teacher.state_dict()["backbone.fpn_output2.weight"], shapes_teacher["backbone.fpn_output2.weight"]
    )
    report, num_errors = dry_run(fitnet_cfg(TEACHER_CONFIG, URL), flops=False)
    assert num_errors == 0 and f"teacher weights (KD.TEACHER.WEIGHTS): {URL} (cached: {cached})" in report


def test_detectron2_url_weights_offline_say_where_to_put_the_file(fvcore_cache, monkeypatch):
    def offline(path, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(model_zoo.PathManager, "get_local_path", offline)
    with pytest.raises(FileNotFoundError) as info:
        build_teacher(fitnet_cfg(TEACHER_CONFIG, URL))
    cached = fvcore_cache / "detectron2/kddet-test/shapes_teacher/model_final_000000.pkl"
    assert f"KD.TEACHER.WEIGHTS {URL} is not in the download cache and could not be downloaded (URLError" in str(
        info.value
    )
    assert f"put it at {cached}" in str(info.value) and "or set KD.TEACHER.WEIGHTS to a local path" in str(info.value)


def test_a_model_zoo_config_name_is_the_teacher_config():
    teacher_cfg = load_teacher_config(fitnet_cfg(ZOO_TEACHER, "teacher.pkl"))
    assert (teacher_cfg.MODEL.RESNETS.DEPTH, teacher_cfg.MODEL.ROI_HEADS.NUM_CLASSES) == (101, 80)
    assert teacher_cfg.MODEL.WEIGHTS == "teacher.pkl" and teacher_cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(
        FileNotFoundError, match=r"detectron2's model zoo has no config of that name.*or to a model-zoo name"
    ):
        load_teacher_config(fitnet_cfg("COCO-Detection/faster_rcnn_R_1001_FPN_3x.yaml", "teacher.pkl"))


def test_check_reads_a_model_zoo_teacher_whose_weights_are_not_downloaded(fvcore_cache):
    url = "detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"
    report, num_errors = dry_run(fitnet_cfg(ZOO_TEACHER, url, "MODEL.ROI_HEADS.NUM_CLASSES", 80), flops=False)
    cached = fvcore_cache / "detectron2/COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"
    assert num_errors == 0, report
    assert f"teacher config (KD.TEACHER.CONFIG_FILE): {ZOO_TEACHER} (detectron2 model zoo: " in report
    assert f"WARNING: KD.TEACHER.WEIGHTS {url} is not downloaded yet: training downloads it to {cached}." in report
    assert "| teacher" in report  # the R-101 teacher was built
