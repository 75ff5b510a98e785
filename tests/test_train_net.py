"""End to end through tools/train_net.py: train a teacher, distil a student from it with FitNets,
evaluate, export and re-evaluate the student alone, and resume the distillation run."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, run_train_net

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
        assert re.search(r"\|\s*FitNet\s*\|\s*weight 1\s*\|\s*p2 p3 p4 p5 p6\s*\|", log), log[-3000:]


def test_run_prints_no_third_party_warnings(fitnet_run):
    """The run trained, evaluated and saved: any Python warning on the way would be in stderr."""
    out, proc = fitnet_run
    assert not re.search(r"\w+Warning: ", proc.stderr), proc.stderr[-3000:]


def test_eval_only_of_the_exported_student_scores_what_the_run_scored(fitnet_run, tmp_path, datasets_root):
    out, run = fitnet_run
    export = [sys.executable, REPO / "tools/export_student.py", out / "model_final.pth", tmp_path / "student.pth"]
    subprocess.run(export, check=True, capture_output=True)
    proc = run_train_net(
        "--config-file", STUDENT_CONFIG, "--eval-only", "MODEL.WEIGHTS", tmp_path / "student.pth", *ANY_SCORE,
        "OUTPUT_DIR", tmp_path / "eval", datasets_root=datasets_root,
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
