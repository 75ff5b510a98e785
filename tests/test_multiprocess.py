"""Training in two CPU processes (gloo, DistributedDataParallel) without a search for unused
parameters: every shapes recipe gives each trainable parameter a gradient at every step (checked in
one process, which is what DDP needs of it); representatives take steps in two processes; and
tools/train_net.py --num-cpu-processes trains, checkpoints and evaluates.

Starting Python and detectron2 takes most of a tiny run's time, so one two-process launch trains
the representatives one after another in the same workers, and writes what each rank saw; the
tests below read it. "combined" reads every record kind of both networks, "virtual_teacher" has no
teacher. One more run goes through tools/train_net.py itself."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import kddet  # noqa: F401  (shims and registrations first)
from detectron2.utils import comm

from conftest import REPO, SHAPES_RECIPES, run_train_net
from kddet.capture import RECORD_KINDS
from kddet.config import load_config
from kddet.data.coco import register_coco_checked
from kddet.data.shapes import SHAPE_CLASSES, load_shapes, shapes_root
from kddet.engine import Trainer
from kddet.launch import launch_cpu_processes
from kddet.losses import kd_loss_classes, losses_need_teacher

REPRESENTATIVES = ["combined", "virtual_teacher"]
NUM_PROCESSES = 2
MAX_ITER = 3  # DDP reports a parameter that a step's loss left out when the next step starts
TRAIN_IMAGES, TEST_IMAGES = range(4, 12), range(4)  # of kddet_shapes_val; 4 test images, 2 per process
TINY_RUN = (
    "SOLVER.IMS_PER_BATCH", NUM_PROCESSES, "SOLVER.MAX_ITER", MAX_ITER,  # one image per process and step
    "DATASETS.TRAIN", "('mp_shapes_train',)", "DATASETS.TEST", "('mp_shapes_test',)",
    "DATALOADER.NUM_WORKERS", 0,
    # A student 3 iterations old scores its boxes far under the default threshold: keep them all,
    # so that the images have detections to gather and score.
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0,
)  # fmt: skip


def write_coco_json(path: Path, records) -> None:
    """A COCO instances json of shapes records (XYXY boxes, contiguous class ids from 0)."""
    images, annotations = [], []
    for record in records:
        images.append(
            {"id": record["image_id"], "file_name": Path(record["file_name"]).name, "width": 128, "height": 128}
        )
        for a in record["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": record["image_id"], "category_id": a["category_id"] + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@pytest.fixture(scope="module")
def tiny_shapes(datasets_root, tmp_path_factory) -> dict:
    """Data set name: (json file, image root) of 8 training and 4 test images of kddet_shapes_val."""
    records = load_shapes(shapes_root(), "val")  # generated here once, not by both workers
    image_root = str(Path(records[0]["file_name"]).parent)
    folder = tmp_path_factory.mktemp("tiny_shapes")
    splits = {"mp_shapes_train": TRAIN_IMAGES, "mp_shapes_test": TEST_IMAGES}
    for name, indices in splits.items():
        write_coco_json(folder / f"{name}.json", [records[i] for i in indices])
    return {name: (str(folder / f"{name}.json"), image_root) for name in splits}


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train_recipes(recipes, datasets, teacher_weights: str, out: str) -> None:
    """In each process: train each of ``recipes`` for MAX_ITER steps and write what this rank saw to
    ``out/rank<r>.json``."""
    for name, (json_file, image_root) in datasets.items():
        register_coco_checked(name, json_file, image_root)
    teacher_file = torch.load(teacher_weights, weights_only=True)["model"]
    seen = {}
    for recipe in recipes:
        output_dir = Path(out, recipe)
        opts = [*TINY_RUN, "KD.TEACHER.WEIGHTS", teacher_weights, "OUTPUT_DIR", str(output_dir)]
        trainer = Trainer(load_config(REPO / f"configs/shapes/{recipe}.yaml", opts))
        trainer.resume_or_load(resume=False)
        student = trainer.model.module
        before = flat_parameters(student)
        trainer.train()
        after = flat_parameters(student)
        checkpoint = torch.load(output_dir / "model_final.pth", weights_only=True)["model"]
        teacher = student.teacher
        in_ddp = {id(p) for p in trainer.model.parameters()}
        seen[recipe] = {
            "wrapper": type(trainer.model).__name__,
            "device_ids": trainer.model.device_ids,
            "find_unused_parameters": trainer.model.find_unused_parameters,
            "student_moved": not torch.equal(before, after),
            "student_same_on_every_rank": all(torch.equal(after, other) for other in comm.all_gather(after)),
            "checkpoint_is_the_student": all(torch.equal(checkpoint[k], v) for k, v in student.named_parameters()),
            "saves_checkpoints": trainer.checkpointer.save_to_disk,
            "teacher": None if teacher is None else {
                "wrapped": isinstance(teacher, DistributedDataParallel),
                "parameters_in_ddp": len({id(p) for p in teacher.parameters()} & in_ddp),
                "has_grads": any(p.grad is not None for p in teacher.parameters()),
                "same_as_its_file": teacher.state_dict().keys() == teacher_file.keys()
                and all(torch.equal(v, teacher_file[k]) for k, v in teacher.state_dict().items()),
            },
        }  # fmt: skip
    Path(out, f"rank{comm.get_rank()}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def representatives(tiny_shapes, teacher_weights, tmp_path_factory):
    """Each representative's output folder, and what each rank saw of its run."""
    out = tmp_path_factory.mktemp("representatives")
    args = (REPRESENTATIVES, tiny_shapes, str(teacher_weights), str(out))
    launch_cpu_processes(train_recipes, NUM_PROCESSES, args=args)
    seen = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]
    return out, seen


def metrics(output_dir: Path) -> list:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def predicted_image_ids(output_dir: Path) -> set:
    """The images of COCOEvaluator's predictions file, which rank 0 writes after gathering every rank's."""
    predictions = torch.load(output_dir / "inference/instances_predictions.pth", weights_only=False)
    return {p["image_id"] for p in predictions}


def test_recipes_are_every_shapes_config_but_the_bases():
    assert len(SHAPES_RECIPES) >= 19 and {"fitnet", "fgfi", "ofd", "combined", "virtual_teacher"} <= set(SHAPES_RECIPES)


def test_the_representatives_read_every_record_kind_with_and_without_a_teacher():
    configs = {recipe: load_config(REPO / f"configs/shapes/{recipe}.yaml") for recipe in REPRESENTATIVES}
    read = {kind for cfg in configs.values() for cls in kd_loss_classes(cfg).values() for kind in cls.needs}
    assert read == set(RECORD_KINDS)
    assert {losses_need_teacher(cfg) for cfg in configs.values()} == {True, False}


@pytest.mark.parametrize("recipe", SHAPES_RECIPES)
def test_every_recipe_gives_each_trainable_parameter_a_gradient_at_every_step(two_step_run, recipe):
    """What DDP without find_unused_parameters needs: a parameter left out of a step's loss would
    stop a multi-process run at the next step. The teacher, outside the module tree, gets none."""
    _, gradients = two_step_run(recipe)
    assert gradients.without_grad == [[], []]
    assert not gradients.teacher_has_grads


FROZEN_TEACHER_OUTSIDE_DDP = {"wrapped": False, "parameters_in_ddp": 0, "has_grads": False, "same_as_its_file": True}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REPRESENTATIVES)
def test_recipe_trains_in_two_processes(representatives, recipe):
    out, seen = representatives
    ranks = [by_recipe[recipe] for by_recipe in seen]
    for rank, saw in enumerate(ranks):
        # The student is DDP-wrapped on the CPU, without a search for unused parameters: a parameter
        # left out of a step's loss would have stopped the run.
        assert (saw["wrapper"], saw["device_ids"], saw["find_unused_parameters"]) == (
            "DistributedDataParallel",
            None,
            False,
        )
        assert saw["student_moved"] and saw["student_same_on_every_rank"], (rank, saw)
        assert saw["checkpoint_is_the_student"], rank
        assert saw["saves_checkpoints"] == (rank == 0)
        assert saw["teacher"] == (None if recipe == "virtual_teacher" else FROZEN_TEACHER_OUTSIDE_DDP)
    output_dir = out / recipe
    assert sorted(p.name for p in output_dir.glob("*.pth")) == ["model_final.pth"]
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=True)["model"]
    assert not [k for k in checkpoint if k.startswith("teacher")]
    training = [r for r in metrics(output_dir) if "total_loss" in r]
    assert training[-1]["iteration"] == MAX_ITER - 1 and any(k.startswith("loss_kd_") for k in training[-1])
    # Evaluated on both processes' halves of the test set. (The AP may be nan: a random teacher's
    # FSP term, 1e7, sends that student's boxes to Inf in 3 steps, and it detects nothing.)
    assert [r for r in metrics(output_dir) if "bbox/AP" in r]
    assert predicted_image_ids(output_dir) == set(TEST_IMAGES)


@pytest.mark.slow
def test_train_net_trains_checkpoints_and_evaluates_in_two_cpu_processes(
    tiny_shapes, teacher_weights, tmp_path, datasets_root
):
    register = "".join(
        f'    {name}: {{FORMAT: "coco", JSON_FILE: "{json_file}", IMAGE_ROOT: "{image_root}"}}\n'
        for name, (json_file, image_root) in tiny_shapes.items()
    )
    config = tmp_path / "fitnet_tiny.yaml"
    config.write_text(f'_BASE_: "{REPO}/configs/shapes/fitnet.yaml"\nDATASETS:\n  REGISTER:\n{register}')
    out = tmp_path / "out"
    proc = run_train_net(
        "--num-cpu-processes", NUM_PROCESSES, "--config-file", config, *TINY_RUN,
        "KD.TEACHER.WEIGHTS", teacher_weights, "OUTPUT_DIR", out,
        datasets_root=datasets_root,
    )  # fmt: skip
    logs = [(out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()]
    for rank, log in enumerate(logs):
        assert f"Rank of current process: {rank}. World size: {NUM_PROCESSES}" in log
        assert f"Start inference on {len(TEST_IMAGES) // NUM_PROCESSES} batches" in log  # each its half
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    training = [r for r in metrics(out) if "total_loss" in r]
    assert training[-1]["iteration"] == MAX_ITER - 1 and training[-1]["loss_kd_fitnet"] > 0
    evaluated = [r for r in metrics(out) if "bbox/AP" in r]
    assert evaluated and 0 <= evaluated[-1]["bbox/AP50"] <= 100
    assert "copypaste: AP,AP50" in proc.stdout  # rank 0 prints the results table
    assert predicted_image_ids(out) == set(TEST_IMAGES)
    assert not re.search(r"\w+Warning: ", proc.stderr), proc.stderr[-3000:]
