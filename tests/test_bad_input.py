"""A wrong teacher or loss setting stops while the model is built, with one message naming the fix."""

import os
import re
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config

FITNET_CONFIG = REPO / "configs/shapes/fitnet.yaml"


def fitnet_cfg(teacher_weights, *opts):
    return load_config(
        FITNET_CONFIG, "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights), *opts
    )


def build_error(cfg, error=ValueError) -> str:
    with pytest.raises(error) as info:
        build_model(cfg)
    return str(info.value)


def test_the_valid_setting_builds(teacher_weights):
    assert build_model(fitnet_cfg(teacher_weights)).teacher is not None


def test_missing_teacher_config_file(teacher_weights, tmp_path):
    missing = tmp_path / "no_such_teacher.yaml"
    message = build_error(fitnet_cfg(teacher_weights, "KD.TEACHER.CONFIG_FILE", str(missing)), FileNotFoundError)
    assert "Teacher config file not found" in message and str(missing) in message
    assert "Set KD.TEACHER.CONFIG_FILE" in message


def test_empty_teacher_config_while_a_loss_needs_a_teacher(teacher_weights):
    message = build_error(fitnet_cfg(teacher_weights, "KD.TEACHER.CONFIG_FILE", ""))
    assert "KD.TEACHER.CONFIG_FILE is empty" in message and "set it to the teacher's config file" in message


def test_missing_teacher_weights(tmp_path):
    missing = tmp_path / "model_final.pth"
    message = build_error(fitnet_cfg(missing), FileNotFoundError)
    assert f"Teacher weights not found: '{missing}'" in message and "Set KD.TEACHER.WEIGHTS" in message


def test_unreadable_teacher_weights(tmp_path):
    garbage = tmp_path / "model_final.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    message = build_error(fitnet_cfg(garbage))
    assert f"Cannot read teacher weights {garbage}" in message and "Set KD.TEACHER.WEIGHTS" in message
    assert "weights_only" not in message  # torch.load's advice would be the wrong fix


def test_student_weights_given_as_teacher(tmp_path):
    student_weights = tmp_path / "student.pth"
    torch.save({"model": build_model(load_config(STUDENT_CONFIG)).state_dict()}, student_weights)
    message = build_error(fitnet_cfg(student_weights))
    assert f"Teacher weights {student_weights} do not fit the teacher config" in message
    counts = re.search(
        r"of its (\d+) tensors, (\d+) are missing from the file .* and (\d+) have another shape", message
    )
    total, missing, reshaped = map(int, counts.groups())
    assert total == len(build_model(load_config(TEACHER_CONFIG)).state_dict())
    assert missing > 0 and reshaped > 0 and missing + reshaped <= total  # each tensor counted once
    assert "'backbone.bottom_up.res2.1.conv1.weight'" in message  # the teacher's second block
    assert "Use the config file the teacher was trained with" in message


def test_teacher_with_a_different_label_space(tmp_path):
    config = tmp_path / "teacher_5_classes.yaml"
    config.write_text(f'_BASE_: "{TEACHER_CONFIG}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 5\n')
    weights = tmp_path / "teacher_5_classes.pth"
    torch.save({"model": build_model(load_config(config)).state_dict()}, weights)
    message = build_error(fitnet_cfg(weights, "KD.TEACHER.CONFIG_FILE", str(config)))
    assert "disagree on MODEL.ROI_HEADS.NUM_CLASSES: teacher 5, student 6" in message
    assert "same label space" in message


def test_fitnet_feature_neither_network_has(teacher_weights):
    message = build_error(fitnet_cfg(teacher_weights, "KD.FITNET.IN_FEATURES", ["p3", "res9"]))
    assert "KD.FITNET.IN_FEATURES asks for ['res9']" in message
    levels = "['p2', 'p3', 'p4', 'p5', 'p6']"
    assert f"Student features: {levels}; teacher features: {levels}" in message


def test_unknown_loss_name_lists_the_registered_losses(teacher_weights):
    message = build_error(fitnet_cfg(teacher_weights, "KD.LOSSES", ["FitNet", "FitNets"]), ValueError)
    assert "Unknown distillation loss(es) ['FitNets'] in KD.LOSSES" in message
    assert "registered losses:" in message and "'FitNet'" in message


def test_train_net_stops_before_the_first_iteration(tmp_path, datasets_root):
    """What a user sees: the message, last in the output, and no training started."""
    missing = tmp_path / "teacher.pth"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/train_net.py"),
            "--config-file",
            str(FITNET_CONFIG),
            "KD.TEACHER.WEIGHTS",
            str(missing),
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"FileNotFoundError: Teacher weights not found: '{missing}'")
    assert "Starting training" not in proc.stdout + proc.stderr
