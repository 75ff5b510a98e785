#!/usr/bin/env python
"""The results table: teacher, student baseline and every recipe on the embedded data set.

Trains the teacher once, then the student alone and each recipe of configs/shapes/ with every
seed, all through tools/train_net.py (each run ends with COCO evaluation on kddet_shapes_val),
and writes results/embedded.md (AP, AP50, AP75 mean ± std over seeds, the change against the
student, the fraction of the teacher-student gap recovered, parameters and FLOPs) and
results/embedded.png. Runs go to output/results/<schedule>/<name>/seed<N>/; a finished run is
reused when the script is run again with the same settings, so an interrupted run picks up
where it stopped and the table can be rebuilt without training.

    python tools/make_results.py                        # full: the configs' schedules (quoted)
    python tools/make_results.py --schedule cpu-short   # students at 1/3 of the iterations
    python tools/make_results.py --recipes fitnet kd --seeds 1 2 --jobs 1
"""
import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/shapes"
TEACHER_CONFIG = CONFIGS / "teacher_slim_r18.yaml"
STUDENT_CONFIG = CONFIGS / "student_slim_r8.yaml"
NOT_RECIPES = {"Base-Shapes", "teacher_slim_r18", "student_slim_r8"}
# Fraction of each config's own schedule the students train for; the teacher always trains its full
# schedule, since every student of a table learns from the same teacher.
SCHEDULES = {"full": 1.0, "cpu-short": 1 / 3}


def all_recipes() -> list:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in NOT_RECIPES)


def load_config(path: Path, opts=()):
    import kddet  # noqa: F401  (compat shims first)
    from detectron2.config import get_cfg

    from kddet import add_kddet_config

    cfg = get_cfg()
    add_kddet_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    return cfg


def schedule_opts(config: Path, iters: int) -> list:
    """Solver options that train ``config`` for ``iters`` iterations, with its LR steps and warm-up
    scaled alike."""
    solver = load_config(config).SOLVER
    scale = iters / solver.MAX_ITER
    # fvcore wants increasing milestones below the last iteration.
    steps = tuple(sorted({min(max(1, round(s * scale)), iters - 1) for s in solver.STEPS}))
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", max(1, round(solver.WARMUP_ITERS * scale))]


class Runner:
    """Runs tools/train_net.py jobs, several at a time, and caches each finished run's result."""

    def __init__(self, device: str, jobs: int, extra_opts: list):
        self.device = device
        self.extra_opts = extra_opts
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.print_lock = threading.Lock()

    def run(self, name: str, config: Path, out_dir: Path, opts: list, depends_on: str = "") -> dict:
        """Train and evaluate ``config``; ``depends_on`` is the key of a run this one uses (its teacher)."""
        opts = [*map(str, opts), "MODEL.DEVICE", self.device, *self.extra_opts, "OUTPUT_DIR", str(out_dir)]
        # The key changes with anything that changes the run: the resolved config (base files and
        # options included) and the teacher it learns from.
        key = hashlib.sha1((load_config(config, opts).dump() + depends_on).encode()).hexdigest()
        record_file = out_dir / "result.json"
        if record_file.is_file() and json.loads(record_file.read_text())["key"] == key:
            self.log(name, f"reused {record_file}")
            return json.loads(record_file.read_text())
        command = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(config), *opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONWARNINGS="ignore")
        out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(out_dir / "stdout.txt", "w") as stdout:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = (out_dir / "stdout.txt").read_text().splitlines()[-30:]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}), see {out_dir}/stdout.txt:\n" + "\n".join(tail))
        metrics = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
        final = next(m for m in reversed(metrics) if "bbox/AP" in m)
        record = {
            "key": key, "config": str(config.relative_to(REPO)), "opts": opts,
            "AP": final["bbox/AP"], "AP50": final["bbox/AP50"], "AP75": final["bbox/AP75"],
            "iters": max(m["iteration"] for m in metrics if "total_loss" in m) + 1,
            "minutes": (time.perf_counter() - start) / 60,
        }
        record_file.write_text(json.dumps(record, indent=1))
        self.log(name, f"AP {record['AP']:.1f} after {record['iters']} iterations ({record['minutes']:.1f} min)")
        return record

    def log(self, name: str, message: str) -> None:
        with self.print_lock:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(teacher: dict, runs: dict) -> list:
    """One row per model: AP/AP50/AP75 mean and std over seeds, the change against the student alone
    and its standard error, and the fraction of the teacher-student AP gap that change recovers."""
    student_ap = [r["AP"] for r in runs["student"]]
    student_mean = statistics.fmean(student_ap)
    gap = teacher["AP"] - student_mean
    rows = []
    for name, records in runs.items():
        row = {"name": name, "iters": records[0]["iters"], "minutes": statistics.fmean(r["minutes"] for r in records)}
        for metric in ("AP", "AP50", "AP75"):
            row[metric], row[metric + "_std"] = mean_std([r[metric] for r in records])
        ap = [r["AP"] for r in records]
        row["delta"] = row["AP"] - student_mean
        # Standard error of a difference of two means (Welch); nan with a single seed.
        row["delta_se"] = math.sqrt(mean_std(ap)[1] ** 2 / len(ap) + mean_std(student_ap)[1] ** 2 / len(student_ap))
        row["gap_recovered"] = row["delta"] / gap if gap > 0 else math.nan
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """Whether the change against the student alone stands out of seed-to-seed noise: beyond two
    standard errors, and at least the 0.1 AP the table prints."""
    if math.isnan(row["delta_se"]):
        return "one seed"
    if abs(row["delta"]) < max(2 * row["delta_se"], 0.1):
        return "within noise"
    return "helps" if row["delta"] > 0 else "hurts"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _percent(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:+.0f}%"


def format_markdown(teacher: dict, rows: list, sizes: dict, setting: dict, chart_name: str) -> str:
    student, recipes = rows[0], sorted(rows[1:], key=lambda r: -r["AP"])
    seeds = ", ".join(map(str, setting["seeds"]))
    lines = [
        f"# Distillation on the embedded data set — schedule `{setting['schedule']}`",
        "",
        "Generated by `python tools/make_results.py "
        + " ".join(setting["argv"]) + "`; do not edit by hand.",
        "",
        f"COCO box AP on `kddet_shapes_val` (200 images, 128 px). The teacher trained once "
        f"({teacher['iters']} iterations) and every student learnt from it; the student alone and each "
        f"recipe trained {student['iters']} iterations with seeds {seeds}; mean ± standard deviation over seeds. "
        f"Device: {setting['device']}; {setting['jobs']} run(s) at a time.",
        "",
        "| model | parameters | GFLOPs / image |",
        "|---|---:|---:|",
        f"| teacher (slim R18, FPN 128) | {sizes['teacher'][0]:.2f} M | {sizes['teacher'][1]:.2f} |",
        f"| student (slim R8, FPN 64), alone or distilled | {sizes['student'][0]:.2f} M | {sizes['student'][1]:.2f} |",
        "",
        "| model | AP | AP50 | AP75 | ΔAP vs student | gap recovered | verdict | train+eval min/run |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
        f"| teacher | {teacher['AP']:.1f} | {teacher['AP50']:.1f} | {teacher['AP75']:.1f} | | | | {teacher['minutes']:.1f} |",
        f"| student alone | {_pm(student['AP'], student['AP_std'])} | {_pm(student['AP50'], student['AP50_std'])} | "
        f"{_pm(student['AP75'], student['AP75_std'])} | | | | {student['minutes']:.1f} |",
    ]
    for r in recipes:
        lines.append(
            f"| {r['name']} | {_pm(r['AP'], r['AP_std'])} | {_pm(r['AP50'], r['AP50_std'])} | {_pm(r['AP75'], r['AP75_std'])} | "
            f"{r['delta']:+.1f} | {_percent(r['gap_recovered'])} | {verdict(r)} | {r['minutes']:.1f} |"
        )
    gap = teacher["AP"] - student["AP"]
    lines += [
        "",
        f"Teacher-student gap: {gap:.1f} AP. *Gap recovered* is ΔAP / gap. *Verdict*: ΔAP beyond two standard "
        "errors of the difference of means (Welch) *helps* or *hurts*; otherwise it is *within noise* of seed-to-seed "
        "variation. Recipes are in `configs/shapes/<name>.yaml`; minutes are wall time with the runs sharing the machine.",
        "",
        f"![AP per recipe]({chart_name})",
        "",
    ]
    return "\n".join(lines)


def draw_chart(teacher: dict, rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    student, recipes = rows[0], sorted(rows[1:], key=lambda r: r["AP"])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.4))
    names = [r["name"] for r in recipes] + ["student alone"]
    means = [r["AP"] for r in recipes] + [student["AP"]]
    errors = [0 if math.isnan(r["AP_std"]) else r["AP_std"] for r in recipes + [student]]
    colors = ["tab:green" if verdict(r) == "helps" else "tab:red" if verdict(r) == "hurts" else "tab:blue" for r in recipes]
    ax.barh(names, means, xerr=errors, color=colors + ["tab:gray"], capsize=2)
    ax.axvline(student["AP"], color="tab:gray", linestyle=":", label=f"student alone {student['AP']:.1f}")
    ax.axvline(teacher["AP"], color="black", linestyle="--", label=f"teacher {teacher['AP']:.1f}")
    ax.set_xlabel("COCO box AP on kddet_shapes_val (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_sizes(device: str) -> dict:
    """fvcore parameters and FLOPs of teacher and student on one validation image."""
    import warnings

    import torch
    from detectron2.data import DatasetCatalog, detection_utils

    from kddet.complexity import params_and_flops

    first = DatasetCatalog.get("kddet_shapes_val")[0]
    image = torch.as_tensor(detection_utils.read_image(first["file_name"], format="BGR").transpose(2, 0, 1).copy())
    opts = ["MODEL.DEVICE", device]
    warnings.filterwarnings("ignore")  # tracing warnings from torch and fvcore, none actionable
    return {name: params_and_flops(load_config(config, opts), image.to(device))
            for name, config in (("teacher", TEACHER_CONFIG), ("student", STUDENT_CONFIG))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedule", choices=SCHEDULES, default="full", help="the students' share of their configs' schedule")
    parser.add_argument("--student-iters", type=int, help="students' iterations instead of the schedule's (its tag becomes custom)")
    parser.add_argument("--teacher-iters", type=int, help="the teacher's iterations instead of its config's")
    parser.add_argument("--recipes", nargs="+", default=all_recipes(), help="recipe names in configs/shapes/ (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: 2 on cpu, sharing its cores; 1 on cuda)")
    parser.add_argument("--output", help="folder for the runs (default: output/results/<schedule>)")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the table and chart go")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options added to every run")
    args = parser.parse_args()
    unknown = sorted(set(args.recipes) - set(all_recipes()))
    if unknown:
        sys.exit(f"Unknown recipes {unknown}; configs/shapes/ has {all_recipes()}.")
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    jobs = args.jobs or (2 if args.device == "cpu" else 1)

    tag = args.schedule if args.student_iters is None and args.teacher_iters is None else "custom"
    student_iters = args.student_iters or round(load_config(STUDENT_CONFIG).SOLVER.MAX_ITER * SCHEDULES[args.schedule])
    teacher_iters = args.teacher_iters or load_config(TEACHER_CONFIG).SOLVER.MAX_ITER
    output = Path(args.output or REPO / "output/results" / tag).resolve()
    runner = Runner(args.device, jobs, args.opts)
    teacher_weights = output / "teacher" / "model_final.pth"

    def student_run(name: str, seed: int, teacher_job=None) -> dict:
        config = STUDENT_CONFIG if name == "student" else CONFIGS / f"{name}.yaml"
        opts = ["SEED", seed, *schedule_opts(config, student_iters)]
        teacher_key = ""
        if teacher_job is not None:
            teacher_key = teacher_job.result()["key"]  # distilled runs wait for the teacher
            opts += ["KD.TEACHER.WEIGHTS", teacher_weights]
        return runner.run(f"{name} seed {seed}", config, output / name / f"seed{seed}", opts, teacher_key)

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        teacher_job = pool.submit(runner.run, "teacher", TEACHER_CONFIG, output / "teacher", schedule_opts(TEACHER_CONFIG, teacher_iters))
        jobs_by_name = {"student": [pool.submit(student_run, "student", seed) for seed in args.seeds]}
        for name in args.recipes:
            jobs_by_name[name] = [pool.submit(student_run, name, seed, teacher_job) for seed in args.seeds]
    # A failed teacher fails every distilled run with the same message: report it once.
    failures = list(dict.fromkeys(str(job.exception()) for job in [teacher_job, *sum(jobs_by_name.values(), [])] if job.exception()))
    if failures:
        sys.exit("Runs failed (finished runs are kept and reused on the next call):\n\n" + "\n\n".join(failures))

    teacher = teacher_job.result()
    rows = summarize(teacher, {name: [job.result() for job in jobs] for name, jobs in jobs_by_name.items()})
    setting = {"schedule": tag, "seeds": args.seeds, "device": args.device, "jobs": jobs, "argv": sys.argv[1:]}
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = "embedded" if tag == "full" else f"embedded_{tag}"
    draw_chart(teacher, rows, results_dir / f"{stem}.png", f"kddet on the embedded data set, schedule {tag}")
    markdown = format_markdown(teacher, rows, model_sizes(args.device), setting, f"{stem}.png")
    (results_dir / f"{stem}.md").write_text(markdown)
    print(f"\n{markdown}\nWritten {results_dir / stem}.md and .png in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
