"""Shared fixtures: the embedded data set in a temporary DETECTRON2_DATASETS, a teacher
checkpoint written from a freshly built teacher, and a way to run tools/train_net.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kddet  # noqa: F401  (shims and registrations first)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import kddet.config
from kddet.warning_filters import filter_known_warnings

REPO = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = REPO / "configs/shapes/teacher_slim_r18.yaml"
STUDENT_CONFIG = REPO / "configs/shapes/student_slim_r8.yaml"


@pytest.fixture(autouse=True)
def known_warnings_filtered():
    """pytest restores its own warning filters around every test: apply kddet's again inside."""
    filter_known_warnings()


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """DETECTRON2_DATASETS for this test session; the shapes splits are generated there once."""
    root = tmp_path_factory.mktemp("datasets")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    return root


def load_config(path, *opts):
    return kddet.config.load_config(path, opts)


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory) -> Path:
    """A checkpoint of the shapes teacher (random init, fixed seed), saved the way train_net saves."""
    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = build_model(load_config(TEACHER_CONFIG))
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    return out / "model_final.pth"


def run_train_net(*args, datasets_root: Path, timeout: int = 600, returncode: int = 0) -> subprocess.CompletedProcess:
    """Run tools/train_net.py in a subprocess from the repository root; fail with its output unless
    it exits with ``returncode``."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == returncode, f"train_net exited with {proc.returncode}:\n{output}"
    return proc
