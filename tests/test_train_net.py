"""End to end through tools/train_net.py: train a teacher, distil a student from it with FitNets,
evaluate, export and re-evaluate the student alone, and resume a distillation run killed after a
checkpoint; a damaged checkpoint to resume from is named, with the fix."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import kddet  # noqa: F401  (shims first; conftest ran kddet.setup())
from detectron2.checkpoint import DetectionCheckpointer

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config, run_train_net, write_voc_image, write_voc_split
from kddet.engine import Trainer, check_resumable

pytestmark = pytest.mark.slow

FITNET_CONFIG = REPO / "configs/shapes/fitnet.yaml"
spec = importlib.util.spec_from_file_location("export_student", REPO / "tools/export_student.py")
export_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_student)
SHORT_RUN = ("SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3)
# A student 3 iterations old scores every box far under the default 0.05, many at exactly 0 (the
# logits of a barely trained BN net are huge in eval mode): a negative threshold keeps every box,
# so detectron2 has detections to report AP on, not nan.
ANY_SCORE = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0)


def printed_ap(stdout: str) -> dict:
    """The bbox metrics detectron2 prints as ``copypaste: AP,AP50,...`` / ``copypaste: 1.2,3.4,...``."""
    names, values = re.findall(r"copypaste: (AP,AP50\S*)\n.*copypaste: ([\d.,nan]+)\n", stdout)[-1]
    return dict(zip(names.split(","), map(float, values.split(","))))


def metrics(output_dir) -> list:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, datasets_root):
    out = tmp_path_factory.mktemp("teacher")
    run_train_net(
        "--config-file",
        TEACHER_CONFIG,
        *SHORT_RUN,
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        out,
        datasets_root=datasets_root,
    )
    return out


@pytest.fixture(scope="module")
def fitnet_run(tmp_path_factory, datasets_root, teacher_run):
    out = tmp_path_factory.mktemp("fitnet")
    proc = run_train_net(
        "--config-file",
        FITNET_CONFIG,
        *SHORT_RUN,
        *ANY_SCORE,
        "KD.TEACHER.WEIGHTS",
        teacher_run / "model_final.pth",
        "OUTPUT_DIR",
        out,
        datasets_root=datasets_root,
    )
    return out, proc


def test_teacher_run_leaves_a_checkpoint(teacher_run):
    assert (teacher_run / "model_final.pth").is_file()
    assert metrics(teacher_run)[-1]["iteration"] == 2


def test_fitnet_run_records_the_hint_loss_and_evaluates(fitnet_run):
    out, proc = fitnet_run
    training = [r for r in metrics(out) if "total_loss" in r]
    assert training[-1]["iteration"] == 2 and training[-1]["loss_kd_fitnet"] > 0
    ap = printed_ap(proc.stdout)
    assert 0 <= ap["AP"] <= 100 and 0 <= ap["AP50"] <= 100  # not nan: the student detected something
    evaluated = [r for r in metrics(out) if "bbox/AP" in r]
    assert evaluated[-1]["bbox/AP"] == pytest.approx(ap["AP"], abs=1e-3)


def test_training_logs_progress_with_eta_and_tensorboard_events(fitnet_run):
    out, proc = fitnet_run
    progress = re.findall(r" eta: \S+  iter: (\d+)  total_loss: \S+ .*loss_kd_fitnet: ", proc.stdout)
    assert progress and int(progress[-1]) == 2
    events = list(out.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_log_says_which_teacher_and_losses_the_run_uses(fitnet_run, teacher_run):
    out, proc = fitnet_run
    for log in (proc.stdout, (out / "log.txt").read_text()):
        assert f"Loaded teacher configs/shapes/teacher_slim_r18.yaml from {teacher_run / 'model_final.pth'} (" in log
        assert re.search(r"\|\s*FitNet\s*\|\s*WEIGHT 1\s*\|\s*p2 p3 p4 p5 p6\s*\|", log), log[-3000:]


def test_run_prints_no_third_party_warnings(fitnet_run):
    """The run trained, evaluated and saved: any Python warning on the way would be in stderr."""
    out, proc = fitnet_run
    assert not re.search(r"\w+Warning: ", proc.stderr), proc.stderr[-3000:]


def test_eval_only_of_the_exported_student_scores_what_the_run_scored(fitnet_run, tmp_path, datasets_root):
    out, run = fitnet_run
    assert export_student.main([str(out / "model_final.pth"), str(tmp_path / "student.pth")]) == 0
    proc = run_train_net(  # the exported config names the weights and keeps the run's test settings
        "--config-file",
        tmp_path / "student.yaml",
        "--eval-only",
        "OUTPUT_DIR",
        tmp_path / "eval",
        datasets_root=datasets_root,
    )
    assert printed_ap(proc.stdout) == pytest.approx(printed_ap(run.stdout), nan_ok=True)
    detections = [
        json.loads((d / "inference/coco_instances_results.json").read_text()) for d in (out, tmp_path / "eval")
    ]
    assert len(detections[0]) > 0 and detections[1] == detections[0]  # the very same boxes and scores


def test_eval_only_of_a_recipe_needs_no_teacher(fitnet_run, tmp_path, datasets_root):
    out, run = fitnet_run
    proc = run_train_net(
        "--config-file",
        FITNET_CONFIG,
        "--eval-only",
        "MODEL.WEIGHTS",
        out / "model_final.pth",
        *ANY_SCORE,
        "KD.TEACHER.WEIGHTS",
        tmp_path / "no_such_teacher.pth",
        "OUTPUT_DIR",
        tmp_path / "eval",
        datasets_root=datasets_root,
    )
    assert printed_ap(proc.stdout) == pytest.approx(printed_ap(run.stdout), nan_ok=True)


# A user's own data set, registered the detectron2 way in a small launcher.

LAUNCHER = f"""
import runpy
import sys

import kddet
from detectron2.data.datasets import register_pascal_voc
from kddet.data import register_voc_folder

folder = sys.argv.pop(1)
register_voc_folder("user_voc_train", folder, "train", 2012, ["thing"])  # PNG images
register_pascal_voc("user_voc_val", folder, "val", 2012, ["thing"])  # JPEG images; sets no evaluator_type
runpy.run_path("{REPO / "tools/train_net.py"}", run_name="__main__")
"""


@pytest.fixture(scope="module")
def user_voc_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_voc")
    boxes = [("thing", (11, 11, 40, 50), 0), ("thing", (50, 20, 90, 60), 0), ("thing", (5, 60, 30, 90), 0)]
    splits = {"train": (".png", ["t1", "t2", "t3"]), "val": (".jpg", ["v1", "v2"])}
    for split, (ext, image_ids) in splits.items():
        write_voc_split(folder, split, image_ids)
        for image_id in image_ids:
            write_voc_image(folder, image_id, boxes, (100, 96), ext)
    launcher = folder / "launcher.py"
    launcher.write_text(LAUNCHER)
    return folder, launcher


def test_a_data_set_registered_without_evaluator_type_is_scored_with_coco_ap(user_voc_folder, tmp_path, datasets_root):
    folder, launcher = user_voc_folder
    out = tmp_path / "out"
    run_train_net(
        folder,
        "--config-file",
        STUDENT_CONFIG,
        *SHORT_RUN,
        *ANY_SCORE,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        1,
        "DATASETS.TRAIN",
        "('user_voc_train',)",
        "DATASETS.TEST",
        "('user_voc_val',)",
        "OUTPUT_DIR",
        out,
        datasets_root=datasets_root,
        script=launcher,
    )
    evaluated = [r for r in metrics(out) if "bbox/AP" in r]
    assert evaluated and 0 <= evaluated[-1]["bbox/AP50"] <= 100  # a number, not nan
    assert (
        "Data set 'user_voc_val' sets no evaluator_type: evaluating it with COCOEvaluator"
        in (out / "log.txt").read_text()
    )


def test_a_test_set_that_cannot_be_evaluated_stops_training_before_it_starts(tmp_path):
    """Before the first step, not after training: the trainer checks DATASETS.TEST as it is built.
    (tests/test_bad_input.py runs such a stop through tools/train_net.py.)"""
    cfg = load_config(STUDENT_CONFIG, "DATASETS.TEST", "('user_voc_test',)", "OUTPUT_DIR", str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"^Data set 'user_voc_test' in DATASETS.TEST is not registered\."):
        Trainer(cfg)


# Killed mid-run and resumed.


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cut_short(path):
    path.write_bytes(path.read_bytes()[:100])


def wait_for_checkpoint(proc: subprocess.Popen, record, name: str, timeout: float) -> None:
    """Until ``record`` (last_checkpoint) names ``name``: detectron2 writes it once that checkpoint is saved."""
    deadline = time.monotonic() + timeout
    while not (record.is_file() and record.read_text() == name):
        assert proc.poll() is None, f"train_net exited with {proc.returncode} before writing {name}"
        assert time.monotonic() < deadline, f"no {name} after {timeout} s"
        time.sleep(0.05)


def test_a_run_killed_after_its_first_checkpoint_resumes_from_it(teacher_weights, tmp_path, datasets_root):
    out = tmp_path / "fitnet"
    teacher_hash = sha256(teacher_weights)
    run = (
        # 9 iterations after the first checkpoint: time enough to kill the run before it ends, on any machine.
        # A random-weight teacher at batch 2: a low learning rate keeps the 12 iterations finite.
        "--config-file", FITNET_CONFIG, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 12, "SOLVER.CHECKPOINT_PERIOD", 3,
        "SOLVER.BASE_LR", 0.002,
        "KD.TEACHER.WEIGHTS", teacher_weights, "DATASETS.TEST", "()", "OUTPUT_DIR", out,
    )  # fmt: skip
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tools/train_net.py"), *map(str, run)],
            cwd=REPO,
            env=dict(os.environ, DETECTRON2_DATASETS=str(datasets_root)),
            stdout=log,
            stderr=log,
        )
        try:
            wait_for_checkpoint(proc, out / "last_checkpoint", "model_0000002.pth", timeout=120)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not (out / "model_final.pth").exists()  # killed mid-run, not after it

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    cut_short(damaged / "model_0000002.pth")
    trainer = Trainer(load_config(FITNET_CONFIG, *map(str, run[2:]), "OUTPUT_DIR", str(damaged)))
    blamed = f"Cannot resume from {damaged / 'model_0000002.pth'}, named by {damaged / 'last_checkpoint'}"
    with pytest.raises(RuntimeError, match=re.escape(f"{blamed}: the file is damaged")):
        trainer.resume_or_load(resume=True)  # what --resume calls before the first step

    resumed = run_train_net("--resume", *run, datasets_root=datasets_root).stdout
    assert f"Loading from {out / 'model_0000002.pth'}" in resumed
    assert "Starting training from iteration 3" in resumed
    # detectron2 writes metrics.json every 20 iterations and at the last: the resumed run's one line.
    assert [r["iteration"] for r in metrics(out)] == [11]
    assert "loss_kd_fitnet" in metrics(out)[0]  # still distilling: the teacher was loaded again
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert sha256(teacher_weights) == teacher_hash


# How a checkpoint folder can be damaged, and the file the message must blame.
DAMAGES = {
    "checkpoint cut short": (lambda d: cut_short(d / "model_0000002.pth"), "model_0000002.pth"),
    "empty checkpoint": (lambda d: (d / "model_0000002.pth").write_bytes(b""), "model_0000002.pth"),
    "checkpoint deleted": (lambda d: (d / "model_0000002.pth").unlink(), "last_checkpoint"),
    "empty last_checkpoint": (lambda d: (d / "last_checkpoint").write_text(""), "last_checkpoint"),
    "binary last_checkpoint": (lambda d: (d / "last_checkpoint").write_bytes(b"\x80\xff"), "last_checkpoint"),
}


@pytest.mark.parametrize("damage, blamed", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_checkpoint_to_resume_from_names_the_file_and_the_fix(damage, blamed, tmp_path):
    checkpointer = DetectionCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000002", iteration=2)
    check_resumable(checkpointer)  # intact: nothing to say
    damage(tmp_path)
    with pytest.raises(RuntimeError) as error:
        check_resumable(checkpointer)
    message = str(error.value)
    assert re.match(f"Cannot resume(: | from ){re.escape(str(tmp_path / blamed))}", message), message
    assert "delete it" in message.lower() and "MODEL.WEIGHTS" in message
