"""The VOC and COCO recipes at their configured input size, on tiny fixtures in the real formats:
a VOC-layout folder with the 20 VOC classes for configs/voc/, a COCO instances json with the 80
COCO categories (COCO's ids, with their gaps) for configs/coco/. The configs are found by globbing
those folders (all but Base-*), so a new recipe is covered without editing this file.

Every config resizes the fixtures' images to its sizes (its DatasetMapper, in this process; each
config is built by the dry run of tests/test_recipe_checks.py). A few train 2 steps and are
evaluated through tools/train_net.py: the fewest that together read every record kind
(``kddet.capture``), use each data format and each student backbone (``REPRESENTATIVES``). The
other configs differ from those in the losses they enable, which are checked one by one in the
loss tests, and every shapes recipe trains two steps (conftest's ``two_step_run``); or they are
the teacher or a student alone, plain detectron2 models that the dry run builds.

What each run changes from its config, and why; INPUT is never touched:

- DATASETS: the fixtures, registered by DATASETS.REGISTER in a yaml whose ``_BASE_`` is the config
  (2 training images, landscape and portrait, and 1 test image, at VOC's and COCO's usual sizes;
  detectron2 resizes them to the config's sizes).
- The schedule: ``kddet.benchmarks.schedule.schedule_opts(config, 2)``: MAX_ITER 2, SOLVER.STEPS
  scaled into [1, 2) (fvcore's constraint), the LR warm-up and a loss's WARMUP_ITERS (FGFI's 400)
  capped at 1, so that every loss is computed in the 2 steps. SOLVER.IMS_PER_BATCH 1,
  DATALOADER.NUM_WORKERS 0.
- KD.TEACHER.WEIGHTS: a randomly initialised R-101 teacher built from the recipe's own
  KD.TEACHER.CONFIG_FILE (one for VOC's 20 classes, one for COCO's 80), its frozen BatchNorm
  statistics measured on a noise image (``kddet.modeling.frozen_bn``: a random R-101's FPN features
  would otherwise reach a standard deviation of ~1e6 and the feature losses overflow), saved once per
  session.
- MODEL.WEIGHTS "" when the student's ImageNet weights (``pretrained/R-18.pkl``,
  ``pretrained/mobilenet_v2.pkl``, made by tools/convert_pretrained.py) are absent, as in CI: the
  student then starts from detectron2's random initialisation.
- MODEL.DEVICE "cpu" on a machine without a GPU (the configs leave detectron2's "cuda").
- MODEL.ROI_HEADS.SCORE_THRESH_TEST -1: a 2-step detector scores every box under 0.05; this keeps
  them, so the evaluators report a number rather than nan.

A launcher records the size of every image detectron2's DatasetMapper hands the model (train and
test; the teacher sees the student's images) and runs tools/train_net.py as ``__main__``. The runs
go two at a time, one OpenMP thread each, so that both cores of a CI machine stay busy through each
run's single-threaded parts (start-up, data loading, evaluation): 13-30 s each (12-30 s CPU, up to
3.2 GiB) on a 2-core CPU. Each test prints its run's wall time, CPU time and peak memory
(``pytest -s``).
"""

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Set

import numpy as np
import pytest
import torch
from PIL import Image

import kddet  # noqa: F401  (shims and registrations first)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model

from conftest import REPO, load_config, run_train_net, write_coco_instances, write_voc_image, write_voc_split
from kddet.benchmarks.schedule import schedule_opts
from kddet.capture import RECORD_KINDS
from kddet.losses import kd_loss_classes
from kddet.modeling.frozen_bn import measure_frozen_bn_statistics

CONFIGS = sorted(
    path.relative_to(REPO / "configs").as_posix()
    for family in ("voc", "coco")
    for path in (REPO / "configs" / family).glob("*.yaml")
    if not path.name.startswith("Base-")
)


def what_a_run_exercises(recipe: str) -> Set[str]:
    """What training ``recipe`` end to end exercises that another recipe may not: the record kinds
    its losses read, its data format (the config folder) and its student's backbone."""
    cfg = load_config(REPO / "configs" / recipe)
    kinds = {f"record kind {kind}" for cls in kd_loss_classes(cfg).values() for kind in cls.needs}
    return kinds | {f"format {recipe.split('/')[0]}", f"backbone {cfg.MODEL.BACKBONE.NAME}"}


def fewest_covering(configs) -> List[str]:
    """A small set of ``configs`` that together exercise all that any of them does (greedy: the one
    adding the most each time, the first in sorted order on a tie)."""
    exercised = {recipe: what_a_run_exercises(recipe) for recipe in configs}
    left, chosen = set().union(*exercised.values()), []
    while left:
        best = max(configs, key=lambda recipe: len(exercised[recipe] & left))
        chosen.append(best)
        left -= exercised[best]
    return sorted(chosen)


REPRESENTATIVES = fewest_covering(CONFIGS)
ITERS = 2
WORKERS = 2  # runs at a time, one OpenMP thread each
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# VOC: 1-based inclusive (xmin, ymin, xmax, ymax); (width, height) as most VOC images are.
VOC_TRAIN = {
    "000005": (
        (500, 375),
        [("chair", (263, 211, 324, 339), 0), ("chair", (5, 244, 67, 374), 1), ("person", (100, 50, 200, 300), 0)],
    ),
    "000009": ((375, 500), [("horse", (20, 100, 350, 480), 0), ("person", (150, 40, 260, 300), 0)]),
}
VOC_TEST = {"000001": ((500, 375), [("dog", (48, 240, 195, 371), 0), ("person", (8, 12, 352, 375), 0)])}
# COCO: file name: (width, height); boxes [x, y, w, h] with COCO's category ids.
COCO_NAMES = {c["id"]: c["name"] for c in COCO_CATEGORIES if c["isthing"]}
COCO_TRAIN = {"000000000009.jpg": (640, 480), "000000000025.jpg": (480, 640)}
COCO_TRAIN_BOXES = [
    ("000000000009.jpg", 51, [1.0, 187.0, 612.0, 286.0]),  # bowl
    ("000000000009.jpg", 55, [311.0, 4.0, 320.0, 228.0]),  # orange
    ("000000000025.jpg", 25, [100.0, 50.0, 300.0, 550.0]),  # giraffe
]
COCO_VAL = {"000000397133.jpg": (640, 427)}
COCO_VAL_BOXES = [
    ("000000397133.jpg", 1, [388.66, 69.92, 109.41, 277.62]),
    ("000000397133.jpg", 44, [217.62, 240.54, 38.99, 57.75]),
]

LAUNCHER = f"""
import atexit
import json
import os
import resource
import runpy
import sys

import kddet  # noqa: F401  (shims and registrations first, as in train_net)
from detectron2.data import DatasetMapper

record_file = sys.argv.pop(1)
record = {{"train": [], "test": []}}
mapper_call = DatasetMapper.__call__


def recording_call(self, dataset_dict):
    mapped = mapper_call(self, dataset_dict)
    size = [dataset_dict["height"], dataset_dict["width"], *mapped["image"].shape[-2:]]
    record["train" if self.is_train else "test"].append(size)
    return mapped


@atexit.register
def save():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record["cpu_s"] = usage.ru_utime + usage.ru_stime
    record["max_rss_gib"] = usage.ru_maxrss / 2**20
    with open(record_file, "w") as f:
        json.dump(record, f)


DatasetMapper.__call__ = recording_call
runpy.run_path("{REPO / "tools/train_net.py"}", run_name="__main__")
"""


def noise_image(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB image of uniform noise. The fixtures' images are noise, not conftest's flat grey: the
    random teacher's BatchNorm statistics are measured on noise (see ``random_teacher``), and a flat
    image, far from what they were measured on, drives its features to hundreds of times their scale."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def node(**settings) -> str:
    """A data set's node as a yaml flow mapping (json values are yaml)."""
    return "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in settings.items()) + "}"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Dict[str, dict]:
    """Per family, the DATASETS.REGISTER nodes of its training and test sets."""
    root = tmp_path_factory.mktemp("real_formats")
    voc = root / "VOC2007"
    for split, images in (("trainval", VOC_TRAIN), ("test", VOC_TEST)):
        write_voc_split(voc, split, images)
        for image_id, (size, objects) in images.items():
            write_voc_image(voc, image_id, objects, size)
    for split, images, boxes in (("train2017", COCO_TRAIN, COCO_TRAIN_BOXES), ("val2017", COCO_VAL, COCO_VAL_BOXES)):
        write_coco_instances(
            root / f"coco/annotations/instances_{split}.json", root / f"coco/{split}", images, boxes, COCO_NAMES
        )
    for seed, path in enumerate(sorted(root.rglob("*.jpg"))):  # noise for conftest's grey: see noise_image
        with Image.open(path) as image:
            size = image.size
        Image.fromarray(noise_image(*size, seed)).save(path)
    coco = {
        split: node(FORMAT="coco", JSON_FILE=str(root / f"coco/annotations/instances_{split}.json"),
                    IMAGE_ROOT=str(root / f"coco/{split}"), CLASSES=list(COCO_NAMES.values()))
        for split in ("train2017", "val2017")
    }  # fmt: skip
    return {
        "voc": {
            "kddet_real_voc_trainval": node(
                FORMAT="voc", DIRNAME=str(voc), SPLIT="trainval", CLASSES=list(VOC_CLASSES), YEAR=2007
            ),
            "kddet_real_voc_test": node(
                FORMAT="voc", DIRNAME=str(voc), SPLIT="test", CLASSES=list(VOC_CLASSES), YEAR=2007
            ),
        },
        "coco": {"kddet_real_coco_train": coco["train2017"], "kddet_real_coco_val": coco["val2017"]},
    }


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    """The checkpoint of a randomly initialised teacher built from a teacher config, its frozen
    BatchNorm statistics measured on a noise image (``measure_frozen_bn_statistics``), saved once
    per config (VOC's and COCO's differ in their classes)."""
    folder = tmp_path_factory.mktemp("real_teachers")

    @lru_cache(maxsize=None)
    def weights(config_file: str) -> Path:
        cfg = load_config(REPO / config_file, "MODEL.DEVICE", "cpu")
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        pixels = torch.as_tensor(noise_image(640, 480, seed=1000)).permute(2, 0, 1).float()
        measure_frozen_bn_statistics(model, [{"image": pixels.flip(0) if model.input_format == "BGR" else pixels}])
        name = Path(config_file).with_suffix("").as_posix().replace("/", "_")
        DetectionCheckpointer(model, save_dir=str(folder)).save(name)
        return folder / f"{name}.pth"

    return weights


def run_opts(recipe: str, teacher_weights) -> List:
    """The options of a recipe's run (see the module's docstring)."""
    config = REPO / "configs" / recipe
    cfg = load_config(config)
    opts = [*schedule_opts(config, ITERS), "SOLVER.IMS_PER_BATCH", 1, "DATALOADER.NUM_WORKERS", 0,
            "MODEL.DEVICE", DEVICE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0]  # fmt: skip
    if cfg.MODEL.WEIGHTS and not (REPO / cfg.MODEL.WEIGHTS).is_file():
        opts += ["MODEL.WEIGHTS", ""]
    if cfg.KD.TEACHER.CONFIG_FILE:
        opts += ["KD.TEACHER.WEIGHTS", teacher_weights(cfg.KD.TEACHER.CONFIG_FILE)]
    return opts


def write_config(path: Path, recipe: str, register: Dict[str, str]) -> Path:
    """The recipe with the fixtures as its data sets."""
    train, test = list(register)
    lines = [f'_BASE_: "{REPO / "configs" / recipe}"', "DATASETS:", "  REGISTER:"]
    lines += [f"    {name}: {settings}" for name, settings in register.items()]
    lines += [f'  TRAIN: ("{train}",)', f'  TEST: ("{test}",)']
    path.write_text("\n".join(lines) + "\n")
    return path


def train(recipe: str, folder: Path, register: Dict[str, str], opts: List, datasets_root: Path) -> dict:
    folder.mkdir(parents=True)
    launcher, record_file, out = folder / "launcher.py", folder / "record.json", folder / "out"
    launcher.write_text(LAUNCHER)
    config = write_config(folder / "config.yaml", recipe, register)
    start = time.perf_counter()
    proc = run_train_net(
        record_file, "--config-file", config, *opts, "OUTPUT_DIR", out,
        datasets_root=datasets_root, script=launcher, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - start
    teacher = opts[opts.index("KD.TEACHER.WEIGHTS") + 1] if "KD.TEACHER.WEIGHTS" in opts else None
    return dict(
        json.loads(record_file.read_text()), wall_s=wall, out=out, log=proc.stdout + proc.stderr, teacher=teacher
    )


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, fixtures, random_teacher, datasets_root) -> Dict[str, Future]:
    """The runs of the recipes this session selected, started at once, ``WORKERS`` at a time."""
    selected = [
        item.callspec.params["recipe"] for item in request.session.items
        if item.module is request.module and item.originalname == "test_recipe_trains_and_evaluates_at_its_input_size"
    ]  # fmt: skip
    folder = tmp_path_factory.mktemp("real_runs")
    opts = {recipe: run_opts(recipe, random_teacher) for recipe in selected}  # the teachers are saved here, once
    with ThreadPoolExecutor(WORKERS) as pool:  # one OpenMP thread each (conftest)
        futures = {
            recipe: pool.submit(
                train, recipe, folder / recipe.replace("/", "_").replace(".yaml", ""),
                fixtures[recipe.split("/")[0]], opts[recipe], datasets_root,
            )
            for recipe in selected
        }  # fmt: skip
        yield futures
        for future in futures.values():
            future.cancel()  # those not started yet, when the session stops early


def check_size(recorded: list, short_sizes, max_size: int) -> None:
    """Each (original height, width, height, width) is ResizeShortestEdge's at one of ``short_sizes``."""
    for height, width, new_height, new_width in recorded:
        short = min(new_height, new_width)
        assert short in short_sizes, (
            f"{width}x{height} image resized to {new_width}x{new_height}, not to a short side in {short_sizes}"
        )
        assert (new_height, new_width) == ResizeShortestEdge.get_output_shape(height, width, short, max_size)


def test_the_representatives_exercise_every_record_kind_format_and_backbone():
    assert set().union(*map(what_a_run_exercises, REPRESENTATIVES)) == set().union(*map(what_a_run_exercises, CONFIGS))
    assert {f"record kind {kind}" for kind in RECORD_KINDS} <= set().union(*map(what_a_run_exercises, REPRESENTATIVES))
    assert {"format voc", "format coco"} <= set().union(*map(what_a_run_exercises, REPRESENTATIVES))


@pytest.fixture(scope="module")
def recipe_with_fixtures(fixtures, tmp_path_factory):
    """``recipe_with_fixtures(recipe, *opts)``: the recipe's config with the fixtures as its data sets
    (registered by loading it)."""
    folder = tmp_path_factory.mktemp("real_configs")

    def config(recipe: str, *opts):
        path = write_config(folder / recipe.replace("/", "_"), recipe, fixtures[recipe.split("/")[0]])
        return load_config(path, *opts)

    return config


@pytest.mark.parametrize("recipe", CONFIGS)
def test_recipe_resizes_images_to_its_input_size(recipe, recipe_with_fixtures):
    """What the model would see of the fixtures: MIN_SIZE_TRAIN's choices when training (several
    draws per image), MIN_SIZE_TEST when evaluating, the long side capped as configured."""
    cfg = recipe_with_fixtures(recipe)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    for is_train, datasets in ((True, cfg.DATASETS.TRAIN), (False, cfg.DATASETS.TEST)):
        mapper = DatasetMapper(cfg, is_train=is_train)
        records = [record for name in datasets for record in DatasetCatalog.get(name)] * (4 if is_train else 1)
        sizes = [[r["height"], r["width"], *mapper(dict(r))["image"].shape[-2:]] for r in records]
        if is_train:
            check_size(sizes, tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)
        else:
            check_size(sizes, (cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REPRESENTATIVES)
def test_recipe_trains_and_evaluates_at_its_input_size(recipe, runs):
    run = runs[recipe].result()
    cfg = load_config(REPO / "configs" / recipe)
    print(f"\n{recipe}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, {run['max_rss_gib']:.2f} GiB peak memory")

    # The images the model saw, at the recipe's sizes: MIN_SIZE_TRAIN's choices when training,
    # MIN_SIZE_TEST when evaluating, the long side capped as configured.
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert len(run["train"]) >= ITERS and len(run["test"]) == 1
    check_size(run["train"], tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)
    check_size(run["test"], (cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST)

    rows = [json.loads(line) for line in (run["out"] / "metrics.json").read_text().splitlines()]
    training = [row for row in rows if "total_loss" in row]
    assert training[-1]["iteration"] == ITERS - 1 and math.isfinite(training[-1]["total_loss"])  # written at the end
    kd_terms = [key for key in training[-1] if key.startswith("loss_kd_")]
    assert len(kd_terms) >= len(cfg.KD.LOSSES), (cfg.KD.LOSSES, kd_terms)  # each loss logs one term or more
    if cfg.KD.TEACHER.CONFIG_FILE:
        assert f"Loaded teacher {cfg.KD.TEACHER.CONFIG_FILE} from {run['teacher']}" in run["log"]
    (evaluated,) = [row for row in rows if "bbox/AP" in row]
    assert all(math.isfinite(evaluated[key]) for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"))
    if recipe.startswith("voc/"):
        assert "Evaluating kddet_real_voc_test using 2007 metric" in run["log"]
    else:
        assert "Evaluation results for bbox" in run["log"]
    assert (run["out"] / "model_final.pth").is_file()
