#!/usr/bin/env python
"""The main job: teacher -> student alone -> student distilled with the combined recipe, on the
embedded data set.

Trains the three with tools/train_net.py on this machine (CPU by default; the two students at
once, each on half the cores, once the teacher is trained), each ending with COCO evaluation on
kddet_shapes_val, then prints their box AP side by side and how far the student alone moves between
seeds according to a committed results table of that student (results/embedded_scratch.json, or
else a custom table of the same benchmark), whose student runs are the demo's while the two
fingerprints of the student's settings match, so the gain can be read against that spread. Last, it
draws the teacher's and the distilled student's detections side by side on a few validation images.
Runs go to output/demo/<name>/ (log.txt, metrics.json, model_final.pth), pictures to
output/demo/side_by_side/.

    python tools/demo.py
    python tools/demo.py --device cuda
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Tuple

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

from kddet.benchmarks import cache, schedule  # noqa: E402
from kddet.visualize import draw_side_by_side  # noqa: E402

REPO = schedule.REPO
# Tables of the slim student from scratch, as here: the full one first, then one of some recipes.
RESULTS = [REPO / "results/embedded_scratch.json", REPO / "results/embedded_scratch_custom.json"]
RUNS = [  # (name, config, title, distilled from the teacher)
    ("teacher", "configs/shapes/teacher_slim_r18.yaml", "teacher (slim R18, FPN 128)", False),
    ("student", "configs/shapes/student_slim_r8.yaml", "student alone (slim R8, FPN 64)", False),
    (
        "combined",
        "configs/shapes/combined.yaml",
        "student + combined recipe (NST, SP, Chen et al.'s head losses)",
        True,
    ),
]
# The results tables' "demo" schedule, to fit in ten minutes on a 2-core CPU: the teacher a sixth of its
# config's 2400 iterations, the students their configs' 300; results/embedded_scratch.md has the full teacher.
TEACHER_ITERS, STUDENT_ITERS = schedule.schedule_iters("demo")
SIDE_BY_SIDE_IMAGES = 4


def train_and_evaluate(
    name: str, config: str, distilled: bool, output_root: Path, device: str, threads: int = 0
) -> dict:
    """One tools/train_net.py run (on ``threads`` CPU threads, 0: torch's default); its progress lines
    are echoed, its results read from metrics.json."""
    out_dir = output_root / name
    iters = TEACHER_ITERS if name == "teacher" else STUDENT_ITERS
    opts = ["OUTPUT_DIR", out_dir, "MODEL.DEVICE", device, *schedule.schedule_opts(REPO / config, iters)]
    if distilled:
        opts += ["KD.TEACHER.WEIGHTS", output_root / "teacher" / "model_final.pth"]
    command = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", config, *map(str, opts)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    start = time.perf_counter()
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        tail = []
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if " eta: " in line or "copypaste: " in line:
                print(f"[{name}] {line.split(']: ', 1)[-1].rstrip()}", flush=True)
    if proc.returncode != 0:
        sys.exit(f"Training {name} failed (exit {proc.returncode}); last lines:\n{''.join(tail)}")
    metrics = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    final = next(m for m in reversed(metrics) if "bbox/AP" in m)
    return {
        "AP": final["bbox/AP"],
        "AP50": final["bbox/AP50"],
        "AP75": final["bbox/AP75"],
        "iters": max(m["iteration"] for m in metrics if "total_loss" in m) + 1,
        "minutes": (time.perf_counter() - start) / 60,
        "config": config,
    }


def student_settings() -> str:
    """The fingerprint of what the demo's student trains (kddet.benchmarks.cache.student_settings)."""
    _, config, _, _ = RUNS[1]
    return cache.student_settings(REPO / config, STUDENT_ITERS)


def student_spread(results: Optional[dict], settings: str) -> Optional[dict]:
    """The student alone's row (AP mean, std, seeds) of the results table if its student trained as
    the demo's does (``settings``, same config and schedule, seeds 1, 2, ...): then its spread is the
    demo student's too. A table made before the configs changed quotes nothing."""
    if (results or {}).get("setting", {}).get("student_settings") != settings:
        return None
    rows = {row["name"]: row for row in results.get("rows", [])}
    return rows.get("student")


def quoted_spread(settings: str) -> Tuple[Optional[dict], Optional[Path]]:
    """The student alone's row of the first table in RESULTS whose student is the demo's, and that
    table's path; (None, None) if none is."""
    for path in RESULTS:
        student = student_spread(json.loads(path.read_text()), settings) if path.is_file() else None
        if student:
            return student, path
    return None, None


def format_table(
    rows: dict, student: Optional[dict], source: Optional[Path] = None, table_is_stale: bool = False
) -> str:
    lines = ["| model | iters | train+eval (min) | AP | AP50 | AP75 |", "|---|---:|---:|---:|---:|---:|"]
    for name, _, title, _ in RUNS:
        r = rows[name]
        lines.append(
            f"| {title} | {r['iters']} | {r['minutes']:.1f} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} |"
        )
    gap = rows["teacher"]["AP"] - rows["student"]["AP"]
    gain = rows["combined"]["AP"] - rows["student"]["AP"]
    if gap > 0:
        lines.append(
            f"\nTeacher-student gap {gap:.1f} AP; the combined recipe changes the student by {gain:+.1f} AP "
            f"({100 * gain / gap:+.0f}% of the gap)."
        )
    if student:
        lines.append(
            f"Seed to seed, the student alone scores {student['AP']:.1f} ± {student['AP_std']:.1f} AP over "
            f"{student['seeds']} seeds (results/{source.with_suffix('.md').name}, the same runs): a gain within a few "
            "times that is noise."
        )
    elif table_is_stale:
        lines.append(
            "results/embedded_scratch.md was made with other student settings than this demo's (an older commit's), "
            "so it says nothing of this student's seed spread: "
            "`python -m kddet.benchmarks.results --benchmark scratch` regenerates it."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "output/demo"), help="folder for the three runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--record", type=Path, help="also write the printed table to this file (results/demo.md)")
    parser.add_argument(
        "--report-only", action="store_true", help="print (and --record) the table of the last runs, training nothing"
    )
    args = parser.parse_args()
    output_root = Path(args.output).resolve()
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    teacher, *students = RUNS
    if args.report_only:
        rows = json.loads((output_root / "results.json").read_text())
    else:
        rows = {"teacher": train_and_evaluate(*teacher[:2], teacher[3], output_root, args.device)}
        # The two students share the machine: on a CPU each gets half its cores, on a GPU they take turns.
        parallel = args.device == "cpu" and len(os.sched_getaffinity(0)) >= 2
        threads = len(os.sched_getaffinity(0)) // 2 if parallel else 0
        with ThreadPoolExecutor(2 if parallel else 1) as pool:
            jobs = {
                name: pool.submit(train_and_evaluate, name, config, distilled, output_root, args.device, threads)
                for name, config, _, distilled in students
            }
            rows.update({name: job.result() for name, job in jobs.items()})
        (output_root / "results.json").write_text(json.dumps(rows, indent=2))
    student, source = quoted_spread(student_settings())
    title = "kddet demo: COCO box AP on kddet_shapes_val (200 images)"
    table = format_table(rows, student, source, table_is_stale=student is None and RESULTS[0].is_file())
    print(f"\n{title}, runs in {output_root}\n\n{table}")
    if args.record:
        args.record.write_text(
            f"# {title}\n\nPrinted by `make demo` (`python tools/demo.py --record {args.record}`) on a "
            f"{os.cpu_count()}-core {platform.machine()} CPU.\n\n{table}\n"
        )
    if args.report_only:
        return
    pictures = draw_side_by_side(
        REPO / teacher[1],
        output_root / "teacher/model_final.pth",
        REPO / students[0][1],
        output_root / "combined/model_final.pth",
        output_root / "side_by_side",
        num_images=SIDE_BY_SIDE_IMAGES,
        device=args.device,
    )
    print(f"\nTeacher (left) and distilled student (right) on {SIDE_BY_SIDE_IMAGES} validation images: {pictures}")


if __name__ == "__main__":
    main()
