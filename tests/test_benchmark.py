"""tools/benchmark.py prints its table on the CPU: the student alone as the unit, each recipe against it,
its added time in teacher forwards and in plain fp32 teacher backbone+FPN forwards; with a fast teacher."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG

pytestmark = pytest.mark.slow


def run_benchmark(datasets_root, *args):
    command = [
        sys.executable,
        str(REPO / "tools/benchmark.py"),
        "--student",
        str(STUDENT_CONFIG),
        "--recipes",
        str(REPO / "configs/shapes/fitnet.yaml"),
        "--batch-size",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        *args,
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


CELL = r" (-?[\d.]+) \|"


def table_rows(out):
    return {m[0]: [float(x) for x in m[1:]] for m in re.findall(rf"^\| ([a-z_ ,]+) \|{CELL * 9}$", out, re.M)}


def test_benchmark_prints_each_variant_against_the_student_alone(datasets_root, tmp_path):
    out = run_benchmark(
        datasets_root,
        "--teacher-precision",
        "bf16",
        "--teacher-channels-last",
        "--student-channels-last",
        "--output",
        str(tmp_path / "table.md"),
    )
    assert re.search(r"^teacher: [\d.]+ M parameters, [\d.]+ GFLOPs per image", out, re.M)
    assert re.search(r"^device cpu, AMP off, batch 2 of 128x\d+ images", out, re.M)
    assert float(re.search(r"^teacher inference forward: ([\d.]+) ms per batch", out, re.M).group(1)) > 0
    backbone_ms = float(
        re.search(r"^teacher backbone\+FPN forward, fp32 contiguous: ([\d.]+) ms per batch", out, re.M).group(1)
    )
    fast = re.search(
        r"^teacher backbone\+FPN forward, KD.TEACHER.CHANNELS_LAST True KD.TEACHER.PRECISION bf16: "
        r"([\d.]+) ms per batch \(([\d.]+)x faster\)",
        out,
        re.M,
    )
    assert backbone_ms > 0 and fast, out
    assert float(fast[2]) == pytest.approx(backbone_ms / float(fast[1]), rel=0.05)
    rows = table_rows(out)
    assert list(rows) == ["student alone", "student alone, channels_last", "fitnet", "fitnet, fast teacher"], out
    student_ms, student_ratio, student_added, student_added_backbone, student_rss, student_memory, *held = rows[
        "student alone"
    ]
    assert student_ms > 0 and student_rss > 0
    assert (student_ratio, student_added, student_added_backbone, student_memory) == (1.0, 0.0, 0.0, 1.0)
    assert held == [0, 0, 0]  # no teacher, records or adapters
    teacher_params = float(re.search(r"^teacher: ([\d.]+) M parameters", out, re.M).group(1))
    for name in ["student alone, channels_last", "fitnet", "fitnet, fast teacher"]:
        ms, ratio, _, added_backbone, rss, memory, teacher_mb, records_mb, adapters_mb = rows[name]
        # each cell is rounded: the ratio to 0.01, times to 0.1 ms, memory to 1 MiB
        assert ratio == pytest.approx(ms / student_ms, abs=0.005 + 0.05 * (1 + ratio) / student_ms)
        assert added_backbone == pytest.approx((ms - student_ms) / backbone_ms, abs=0.01 + 0.05 * abs(added_backbone))
        assert memory == pytest.approx(rss / student_rss, abs=0.005 + 0.5 * (1 + memory) / student_rss)
        if name.startswith("fitnet"):  # its weights (fp32, or bf16 for the fast teacher), FPN maps, 1x1 adapters
            bytes_per_weight = 2 if "fast teacher" in name else 4
            assert teacher_mb == pytest.approx(teacher_params * 1e6 * bytes_per_weight / 2**20, rel=0.1)
            assert records_mb > 0 and adapters_mb > 0
    written = (tmp_path / "table.md").read_text()
    assert "python tools/benchmark.py --student" in written and "| fitnet, fast teacher |" in written


def test_benchmark_times_random_images_of_a_given_size(datasets_root):
    out = run_benchmark(datasets_root, "--image-size", "96", "160", "--warmup", "0", "--repeats", "1")
    assert re.search(r"^device cpu, AMP off, batch 2 of 96x160 images", out, re.M), out
    assert list(table_rows(out)) == ["student alone", "fitnet"]


def test_inference_benchmark_times_teacher_and_student_in_every_format(tmp_path):
    """One setting, batch 1 and 2, small images: every variant's row, the speed-ups computed from them."""
    command = [
        sys.executable,
        str(REPO / "tools/benchmark.py"),
        "--inference",
        "--inference-setting",
        str(TEACHER_CONFIG),
        str(STUDENT_CONFIG),
        "64",
        "96",
        "--batch-sizes",
        "1",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--batch-repeats",
        "1",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "inference.md"),
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {m[0]: [float(x) for x in m[1:]] for m in re.findall(rf"^\| ([A-Za-z ,]+) \|{CELL * 8}$", proc.stdout, re.M)}
    assert list(rows) == ["teacher, PyTorch", "student, PyTorch", "student, TorchScript", "student, ONNX Runtime"]
    teacher_ms, _, speed_up, teacher_b1, teacher_b2, speed_up_b2, *teacher_memory = rows["teacher, PyTorch"]
    assert (speed_up, speed_up_b2) == (1.0, 1.0) and teacher_b1 == pytest.approx(1000 / teacher_ms, rel=0.03)
    for ms, p90, speed_up, per_s_b1, per_s_b2, speed_up_b2, *memory in rows.values():
        assert 0 < ms <= p90 and all(m > 0 for m in memory)
        assert speed_up == pytest.approx(teacher_ms / ms, rel=0.03, abs=0.01)
        assert speed_up_b2 == pytest.approx(per_s_b2 / teacher_b2, rel=0.01, abs=0.01)
    written = (tmp_path / "inference.md").read_text()
    assert (
        "python tools/benchmark.py --inference" in written
        and "### shapes/teacher_slim_r18 and shapes/student_slim_r8, 64x96" in written
    )
