"""Shared fixtures: the embedded data set in a temporary DETECTRON2_DATASETS, a teacher
checkpoint written from a freshly built teacher, every shapes recipe trained two steps in this
process, and a way to run tools/train_net.py."""

import functools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.modeling import build_model

import kddet.config
from kddet.data.shapes import generate_split, shapes_root
from kddet.engine import Trainer
from kddet.warning_filters import filter_known_warnings

# One thread per process, here and in the runs started from here (which inherit the variable): the
# models are tiny, `make test` runs two pytest workers on a 2-core machine, and OpenMP threads that
# spin while the cores are busy elsewhere slow a step manyfold.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = REPO / "configs/shapes/teacher_slim_r18.yaml"
STUDENT_CONFIG = REPO / "configs/shapes/student_slim_r8.yaml"


def pytest_collection_modifyitems(items):
    """The modules with end-to-end runs (the ``slow`` marker) first, each kept in its order: ``make
    test``'s workers take whole modules in this order, and one that started a long module last would
    run it alone while the other waits."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)


@pytest.fixture(autouse=True)
def known_warnings_filtered():
    """pytest restores its own warning filters around every test: apply kddet's again inside."""
    filter_known_warnings()


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """DETECTRON2_DATASETS for this test session, where the shapes training and validation splits
    are generated once. The workers of one ``pytest -n`` run share it: the first generates them
    while the others wait, rather than each spending the time again."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "datasets"  # the run's folder, above each worker's
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("datasets")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    with FileLock(f"{root}.lock"):
        for split in ("train", "val"):
            generate_split(shapes_root(), split)
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


SHAPES_RECIPES = sorted(
    path.stem for path in (REPO / "configs/shapes").glob("*.yaml")
    if not path.stem.startswith("Base-") and path not in (TEACHER_CONFIG, STUDENT_CONFIG)
)  # fmt: skip


class StepGradients(HookBase):
    """After every step, the trainable parameters of the trained model that got no gradient, and
    whether any of the teacher's got one. detectron2 zeroes the gradients to None before each step's
    backward, so a parameter the step's loss left out has none: DistributedDataParallel (without a
    search for unused parameters) would stop at the next step."""

    def __init__(self):
        self.without_grad = []
        self.teacher_has_grads = False

    def after_step(self):
        model = self.trainer.model
        self.without_grad.append([n for n, p in model.named_parameters() if p.requires_grad and p.grad is None])
        teacher = getattr(model, "teacher", None)
        if teacher is not None:
            self.teacher_has_grads |= any(p.grad is not None for p in teacher.parameters())


@pytest.fixture(scope="session")
def two_step_run(teacher_weights, datasets_root, tmp_path_factory):
    """``two_step_run(recipe)``: configs/shapes/<recipe>.yaml trained 2 steps at batch 2 in this
    process (no evaluation), once per session, from ``teacher_weights`` where it has a teacher: the
    last metrics.json row and its StepGradients. In-process: a subprocess per recipe would spend
    most of its time starting Python and detectron2."""
    folder = tmp_path_factory.mktemp("two_steps")

    @functools.lru_cache(maxsize=None)
    def run(recipe: str):
        config = REPO / f"configs/shapes/{recipe}.yaml"
        opts = ["SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "DATASETS.TEST", "()",
                "OUTPUT_DIR", str(folder / recipe)]  # fmt: skip
        if load_config(config).KD.TEACHER.CONFIG_FILE:
            opts += ["KD.TEACHER.WEIGHTS", str(teacher_weights)]
        torch.manual_seed(0)
        trainer = Trainer(load_config(config, *opts))
        gradients = StepGradients()
        trainer.register_hooks([gradients])
        trainer.resume_or_load(resume=False)
        trainer.train()
        rows = (folder / recipe / "metrics.json").read_text().splitlines()
        return json.loads(rows[-1]), gradients

    return run


def run_train_net(
    *args,
    datasets_root: Path,
    timeout: int = 600,
    returncode: int = 0,
    script: Path = REPO / "tools/train_net.py",
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run tools/train_net.py (or a launcher ``script`` that runs it) in a subprocess from ``cwd``,
    the repository root unless given; fail with its output unless it exits with ``returncode``."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == returncode, f"train_net exited with {proc.returncode}:\n{output}"
    return proc


def write_image(path: Path, width: int, height: int) -> None:
    """A grey image, in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 127, dtype=np.uint8)).save(path)


def voc_xml(image_id: str, objects: Sequence[Tuple[str, Tuple[int, int, int, int], int]], size: Tuple[int, int]) -> str:
    """A VOC devkit annotation: ``objects`` are (class name, (xmin, ymin, xmax, ymax), difficult),
    boxes 1-based inclusive pixel indices; ``size`` is (width, height)."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "VOC2007"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(annotation, "source")
    for tag, text in (("database", "The VOC2007 Database"), ("annotation", "PASCAL VOC2007"), ("image", "flickr")):
        ET.SubElement(source, tag).text = text
    size_element = ET.SubElement(annotation, "size")
    for tag, value in zip(("width", "height", "depth"), (*size, 3)):
        ET.SubElement(size_element, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for name, box, difficult in objects:
        obj = ET.SubElement(annotation, "object")
        for tag, text in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", str(difficult))):
            ET.SubElement(obj, tag).text = text
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.tostring(annotation, encoding="unicode")


def write_voc_image(dirname: Path, image_id: str, objects, size: Tuple[int, int], ext: str = ".jpg") -> None:
    """``Annotations/<id>.xml`` and ``JPEGImages/<id><ext>`` of a VOC-layout folder."""
    (dirname / "Annotations").mkdir(parents=True, exist_ok=True)
    (dirname / f"Annotations/{image_id}.xml").write_text(voc_xml(image_id, objects, size))
    write_image(dirname / f"JPEGImages/{image_id}{ext}", *size)


def write_voc_split(dirname: Path, split: str, image_ids: Sequence[str]) -> None:
    (dirname / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
    (dirname / f"ImageSets/Main/{split}.txt").write_text("".join(f"{image_id}\n" for image_id in image_ids))


def write_coco_instances(
    json_file: Path,
    image_root: Path,
    images: Dict[str, Tuple[int, int]],
    boxes: Sequence[Tuple[str, int, List[float]]],
    categories: Dict[int, str],
) -> None:
    """A COCO instances json and its images: ``images`` are file name: (width, height), ``boxes``
    (file name, category id, [x, y, w, h]) in absolute pixels, ``categories`` id: name."""
    ids = {file_name: index + 1 for index, file_name in enumerate(images)}
    dataset = {
        "info": {"description": "kddet test fixture"},
        "images": [{"id": ids[f], "file_name": f, "width": w, "height": h} for f, (w, h) in images.items()],
        "annotations": [
            {"id": index + 1, "image_id": ids[f], "category_id": c, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for index, (f, c, box) in enumerate(boxes)
        ],
        "categories": [{"id": i, "name": name, "supercategory": ""} for i, name in categories.items()],
    }
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(dataset))
    for file_name, size in images.items():
        write_image(image_root / file_name, *size)
