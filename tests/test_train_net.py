"""End to end through tools/train_net.py: train a teacher, distil a student from it with FitNets,
evaluate, export and re-evaluate the student alone, and resume the distillation run."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, run_train_net, write_voc_image, write_voc_split

pytestmark = pytest.mark.slow

FITNET_CONFIG = REPO / "configs/shapes/fitnet.yaml"
SHORT_RUN = ("SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3)
# A student 3 iterations old scores every box far under the default 0.05, many at exactly 0 (the
# logits of a barely trained BN net are huge in eval mode): a negative threshold keeps every box,
# so detectron2 has detections to report AP on, not nan.
ANY_SCORE = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_run():
    """The runs are tiny (128 px images, batch 2), so a second OpenMP thread gains little; when
    the cores are shared (the DataLoader worker, other jobs) spinning threads slow a run manyfold."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # read from os.environ by conftest.run_train_net
        yield


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
        "--config-file", TEACHER_CONFIG, *SHORT_RUN, "DATASETS.TEST", "()", "OUTPUT_DIR", out,
        datasets_root=datasets_root,
    )
    return out


@pytest.fixture(scope="module")
def fitnet_run(tmp_path_factory, datasets_root, teacher_run):
    out = tmp_path_factory.mktemp("fitnet")
    proc = run_train_net(
        "--config-file", FITNET_CONFIG, *SHORT_RUN, *ANY_SCORE,
        "KD.TEACHER.WEIGHTS", teacher_run / "model_final.pth", "OUTPUT_DIR", out,
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
    export = [sys.executable, REPO / "tools/export_student.py", out / "model_final.pth", tmp_path / "student.pth"]
    subprocess.run(export, check=True, capture_output=True)
    proc = run_train_net(  # the exported config names the weights and keeps the run's test settings
        "--config-file", tmp_path / "student.yaml", "--eval-only", "OUTPUT_DIR", tmp_path / "eval",
        datasets_root=datasets_root,
    )
    assert printed_ap(proc.stdout) == pytest.approx(printed_ap(run.stdout), nan_ok=True)
    detections = [json.loads((d / "inference/coco_instances_results.json").read_text()) for d in (out, tmp_path / "eval")]
    assert len(detections[0]) > 0 and detections[1] == detections[0]  # the very same boxes and scores


def test_resume_loads_the_checkpoint_and_continues(fitnet_run, teacher_run, tmp_path, datasets_root):
    out, _ = fitnet_run
    resumed = tmp_path / "fitnet"
    shutil.copytree(out, resumed)
    proc = run_train_net(
        "--config-file", FITNET_CONFIG, "--resume", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 5,
        "KD.TEACHER.WEIGHTS", teacher_run / "model_final.pth", "OUTPUT_DIR", resumed, "DATASETS.TEST", "()",
        datasets_root=datasets_root,
    )
    log = proc.stdout + proc.stderr
    assert f"Loading from {resumed / 'model_final.pth'}" in log
    assert "Starting training from iteration 3" in log
    new = metrics(resumed)[len(metrics(out)):]  # JSONWriter appends to the copied metrics.json
    assert [r["iteration"] for r in new] == [4] and "loss_kd_fitnet" in new[0]


def test_eval_only_of_a_recipe_needs_no_teacher(fitnet_run, tmp_path, datasets_root):
    out, run = fitnet_run
    proc = run_train_net(
        "--config-file", FITNET_CONFIG, "--eval-only", "MODEL.WEIGHTS", out / "model_final.pth", *ANY_SCORE,
        "KD.TEACHER.WEIGHTS", tmp_path / "no_such_teacher.pth", "OUTPUT_DIR", tmp_path / "eval",
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
runpy.run_path("{REPO / 'tools/train_net.py'}", run_name="__main__")
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
        folder, "--config-file", STUDENT_CONFIG, *SHORT_RUN, *ANY_SCORE, "MODEL.ROI_HEADS.NUM_CLASSES", 1,
        "DATASETS.TRAIN", "('user_voc_train',)", "DATASETS.TEST", "('user_voc_val',)", "OUTPUT_DIR", out,
        datasets_root=datasets_root, script=launcher,
    )
    evaluated = [r for r in metrics(out) if "bbox/AP" in r]
    assert evaluated and 0 <= evaluated[-1]["bbox/AP50"] <= 100  # a number, not nan
    assert "Data set 'user_voc_val' sets no evaluator_type: evaluating it with COCOEvaluator" in (out / "log.txt").read_text()


def test_a_test_set_that_cannot_be_evaluated_stops_training_before_it_starts(tmp_path, datasets_root):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(STUDENT_CONFIG),
         "DATASETS.TEST", "('user_voc_test',)", "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO, env=dict(os.environ, DETECTRON2_DATASETS=str(datasets_root)), capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: Data set 'user_voc_test' in DATASETS.TEST is not registered.")
    assert "Starting training" not in proc.stdout + proc.stderr
