"""tools/benchmark.py prints its table on the CPU: the student alone as the unit, each recipe against it."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, STUDENT_CONFIG

pytestmark = pytest.mark.slow


def test_benchmark_prints_each_variant_against_the_student_alone(datasets_root):
    command = [
        sys.executable, str(REPO / "tools/benchmark.py"), "--student", str(STUDENT_CONFIG),
        "--recipes", str(REPO / "configs/shapes/fitnet.yaml"), "--batch-size", "2", "--warmup", "1", "--repeats", "2",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = proc.stdout
    assert re.search(r"^teacher: [\d.]+ M parameters, [\d.]+ GFLOPs per image", out, re.M)
    assert float(re.search(r"^teacher inference forward: ([\d.]+) ms per batch", out, re.M).group(1)) > 0
    rows = {m[0]: [float(x) for x in m[1:]] for m in re.findall(r"^\| (student alone|fitnet) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)}
    assert rows.keys() == {"student alone", "fitnet"}, out
    student_ms, student_ratio, student_added, student_rss, student_memory = rows["student alone"]
    assert student_ms > 0 and student_rss > 0 and (student_ratio, student_added, student_memory) == (1.0, 0.0, 1.0)
    fitnet_ms, fitnet_ratio, _, fitnet_rss, fitnet_memory = rows["fitnet"]
    assert fitnet_ratio == pytest.approx(fitnet_ms / student_ms, abs=0.006)
    assert fitnet_memory == pytest.approx(fitnet_rss / student_rss, abs=0.006)
