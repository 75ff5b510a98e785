"""Config files a recipe names resolve like its _BASE_: against the file that names them, so a
recipe works from any directory; paths relative to the working directory still work."""

import functools
import json
import math
import os

import pytest
import yaml

from detectron2.config import CfgNode, get_cfg

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config, run_train_net
from kddet.config import add_kddet_config


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory that holds none of the configs."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_a_teacher_config_beside_the_recipe_resolves_from_any_directory(tmp_path, elsewhere):
    write(tmp_path / "recipes/teacher.yaml", f'_BASE_: "{TEACHER_CONFIG}"\n')
    recipe = write(
        tmp_path / "recipes/recipe.yaml",
        f'_BASE_: "{STUDENT_CONFIG}"\nKD:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n',
    )
    path = load_config(recipe).KD.TEACHER.CONFIG_FILE
    assert not os.path.isabs(path) and os.path.samefile(path, tmp_path / "recipes/teacher.yaml")


def test_a_teacher_named_in_a_base_file_resolves_against_the_base(tmp_path, elsewhere):
    recipe = write(
        tmp_path / "mine/fitnet.yaml", f'_BASE_: "{REPO}/configs/shapes/Base-Distill.yaml"\nKD:\n  LOSSES: ["FitNet"]\n'
    )
    assert os.path.samefile(load_config(recipe).KD.TEACHER.CONFIG_FILE, TEACHER_CONFIG)
    assert os.path.samefile(load_config(REPO / "configs/shapes/fitnet.yaml").KD.TEACHER.CONFIG_FILE, TEACHER_CONFIG)


@pytest.mark.parametrize(
    "written", ["configs/shapes/teacher_slim_r18.yaml", "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml", ""]
)
def test_paths_relative_to_the_working_directory_and_model_zoo_names_stay_as_written(written, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = write(
        tmp_path / "recipe.yaml", f'_BASE_: "{STUDENT_CONFIG}"\nKD:\n  TEACHER:\n    CONFIG_FILE: "{written}"\n'
    )
    assert load_config(recipe).KD.TEACHER.CONFIG_FILE == written


def test_recipes_resolve_from_the_repository_root_as_before(monkeypatch):
    monkeypatch.chdir(REPO)
    for folder, teacher in (("shapes", "teacher_slim_r18"), ("voc", "teacher_R101"), ("coco", "teacher_R101")):
        cfg = load_config(REPO / f"configs/{folder}/chen2017.yaml")
        assert cfg.KD.TEACHER.CONFIG_FILE == f"configs/{folder}/{teacher}.yaml"
        assert cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN"


def test_an_option_on_the_command_line_is_relative_to_the_working_directory(elsewhere):
    cfg = load_config(REPO / "configs/shapes/fitnet.yaml", "KD.TEACHER.CONFIG_FILE", "teacher.yaml")
    assert cfg.KD.TEACHER.CONFIG_FILE == "teacher.yaml"


def test_train_net_runs_a_recipe_given_by_absolute_path_from_another_directory(
    teacher_weights, datasets_root, tmp_path
):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run_train_net(
        "--config-file", REPO / "configs/shapes/fitnet.yaml",
        "KD.TEACHER.WEIGHTS", teacher_weights,
        "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path / "out",
        datasets_root=datasets_root, cwd=cwd,
    )  # fmt: skip
    metrics = [json.loads(line) for line in (tmp_path / "out/metrics.json").read_text().splitlines()]
    assert math.isfinite(metrics[-1]["loss_kd_fitnet"]) and metrics[-1]["loss_kd_fitnet"] > 0
    assert not any(cwd.iterdir())  # nothing written where it ran


def _leaves(node: dict, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _plain(value):
    """Lists for tuples and floats for ints, as yacs merges them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


@pytest.mark.parametrize("config", sorted(REPO.glob("configs/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_config_restates_what_its_base_or_the_defaults_hold(config):
    """A line that changes nothing hides the lines that do (VERSION excepted: detectron2 warns
    about every file without one)."""
    written = yaml.safe_load(config.read_text())
    base = written.pop("_BASE_", None)
    written.pop("VERSION", None)
    if base:
        resolved = load_config(config.parent / base)
    else:
        resolved = get_cfg()
        add_kddet_config(resolved)
    restated = []
    for key, value in _leaves(written):
        held = functools.reduce(lambda node, part: node[part], key, resolved)
        if isinstance(value, str):
            value = CfgNode._decode_cfg_value(value)
        if _plain(value) == _plain(held):
            restated.append(".".join(key))
    assert not restated, f"{config.relative_to(REPO)} restates {restated}"
