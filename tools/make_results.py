#!/usr/bin/env python
"""The results tables: teacher, student baseline and every recipe of a benchmark on the embedded data set.

Two benchmarks share one teacher (the slim R18 of configs/shapes/):
- ``pretrained`` (results/embedded.md, the quoted table): the student is MobileNetV2-FPN from
  torchvision's ImageNet weights, as users start one, with the recipes of configs/shapes/mobilenet_v2/,
  evaluated on kddet_shapes_test (2000 images);
- ``scratch`` (results/embedded_scratch.md): the slim R8 student trained from random weights, with
  every recipe of configs/shapes/ (every registered loss), evaluated on kddet_shapes_val (200 images).

Trains the teacher once, then the student alone and each recipe with its seeds (ten for the
student, five for the teacher-free baseline, the card's methods and the combined recipes, three
for the rest), all through tools/train_net.py (each run
ends with COCO evaluation), evaluates the teacher on the benchmark's test set, and writes
results/<stem>.md and .json (AP, AP50, AP75 mean ± std over seeds, the change against the
student and the smallest change the seeds can detect, the fraction of the teacher-student gap
recovered, parameters and FLOPs) and results/<stem>.png. Runs go to
output/results/<tag>/<recipe>/seed<N>/, and the teacher to
output/results/teacher/, shared by every tag that trains it as its config says. A finished run is
reused while its resolved config (output folder included) and its teacher are unchanged, so an
interrupted call picks up where it stopped and the table can be rebuilt without training; after
changing kddet's code, pass --retrain. Any choice other than a schedule's defaults (recipes,
seeds, iterations, config options) is tagged `custom` and written beside, never over, the
quoted table.

    python tools/make_results.py                        # full: the configs' schedules (quoted)
    python tools/make_results.py --benchmark scratch    # every loss, slim student from scratch
    python tools/make_results.py --schedule cpu-short   # students at half the iterations
    python tools/make_results.py --schedule demo        # what tools/demo.py trains -> embedded_demo.md
    python tools/make_results.py --recipes fitnet kd --seeds 1 2 --jobs 1   # -> embedded_custom.md
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules
from detectron2.config import get_cfg

from kddet import add_kddet_config, load_config
from kddet.losses import losses_need_teacher

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/shapes"
TEACHER_CONFIG = CONFIGS / "teacher_slim_r18.yaml"
STUDENT_CONFIG = CONFIGS / "student_slim_r8.yaml"
NOT_RECIPES = {"Base-Shapes", "Base-Distill", "teacher_slim_r18", "student_slim_r8", "student"}


@dataclass(frozen=True)
class Benchmark:
    """A student and the recipes built on it, all learning from the teacher of TEACHER_CONFIG."""

    folder: Path  # the recipes: every config there but NOT_RECIPES
    student: Path  # the student alone
    stem: str  # results/<stem>.md, .json and .png for the full schedule


BENCHMARKS = {
    "pretrained": Benchmark(CONFIGS / "mobilenet_v2", CONFIGS / "mobilenet_v2/student.yaml", "embedded"),
    "scratch": Benchmark(CONFIGS, STUDENT_CONFIG, "embedded_scratch"),
}
# The (teacher, students) fractions of their configs' own schedules (2400 and 300 iterations). Every
# student of a table learns from the same teacher. "demo" is what tools/demo.py trains: the same
# students from a teacher of 400 iterations, so that all three fit in ten minutes.
# Warm-ups keep their length (see schedule_opts): at half length KD and the virtual teacher diverged.
SCHEDULES = {"full": (1.0, 1.0), "cpu-short": (1.0, 1 / 2), "demo": (1 / 6, 1.0)}
SEEDS = [1, 2, 3]
# The teacher-free baseline, the card's methods (FGFI also in the standardised form that helps) and
# the combined recipes get five seeds: their changes are the ones the table must resolve.
FIVE_SEEDS = [1, 2, 3, 4, 5]
FIVE_SEED_MODELS = {"virtual_teacher", "fitnet", "fgfi", "fgfi_standardised", "nst", "chen2017", "combined", "combined_tuned"}
# The student alone gets ten: every row is compared against it, and its spread is the benchmark's
# own figure of merit, which five runs estimate only to within about half its size.
STUDENT_SEEDS = list(range(1, 11))
# Two-sided 95% critical values of Student's t by degrees of freedom (scipy is not a dependency).
T_CRITICAL = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
              12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def all_recipes(benchmark: str = "scratch") -> List[str]:
    """The recipe names of a benchmark's folder: every config there but the bases, teacher and student."""
    return sorted(p.stem for p in BENCHMARKS[benchmark].folder.glob("*.yaml") if p.stem not in NOT_RECIPES)


def recipe_config(benchmark: str, name: str) -> Path:
    """The config of recipe ``name`` of ``benchmark``; "student" is its student alone."""
    bench = BENCHMARKS[benchmark]
    return bench.student if name == "student" else bench.folder / f"{name}.yaml"


def run_folder(benchmark: str, name: str) -> str:
    """A recipe's runs under a tag: its name within the benchmark's folder under configs/shapes/,
    e.g. "fitnet" (scratch) or "mobilenet_v2/fitnet" (pretrained)."""
    return str(BENCHMARKS[benchmark].folder.relative_to(CONFIGS) / name)


def schedule_iters(schedule: str) -> Tuple[int, int]:
    """The teacher's and the students' iterations in ``schedule`` (a key of SCHEDULES)."""
    teacher_share, student_share = SCHEDULES[schedule]
    return (round(load_config(TEACHER_CONFIG).SOLVER.MAX_ITER * teacher_share),
            round(load_config(STUDENT_CONFIG).SOLVER.MAX_ITER * student_share))


def seeds_of(name: str, chosen: Sequence[int] = ()) -> List[int]:
    """The seeds model ``name`` trains with: ``chosen`` if any, else ten for the student alone, five
    or three for a recipe (see FIVE_SEED_MODELS)."""
    if chosen:
        return list(dict.fromkeys(chosen))
    name = Path(name).name  # mobilenet_v2/fitnet as fitnet
    if name == "student":
        return STUDENT_SEEDS
    return FIVE_SEEDS if name in FIVE_SEED_MODELS else SEEDS


def schedule_opts(config: Path, iters: int) -> list:
    """Options that train ``config`` for ``iters`` iterations: its LR steps scale with the schedule,
    its warm-ups (the LR's, and a loss's ``WARMUP_ITERS`` such as FGFI's) do not, since a student is
    as fragile in its first steps however long it then trains; they are capped at half the schedule."""
    cfg = load_config(config)
    scale = iters / cfg.SOLVER.MAX_ITER
    # fvcore wants increasing milestones in [1, iters): on very short schedules steps merge.
    steps = tuple(sorted({min(max(1, round(s * scale)), iters - 1) for s in cfg.SOLVER.STEPS} - {0}))
    opts = ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", min(cfg.SOLVER.WARMUP_ITERS, iters // 2)]
    for loss in cfg.KD.LOSSES:
        node = cfg.KD[loss.upper()]
        if "WARMUP_ITERS" in node:
            opts += [f"KD.{loss.upper()}.WARMUP_ITERS", min(node.WARMUP_ITERS, iters // 2)]
    return opts


def _flatten(node, prefix: str = "") -> Dict[str, object]:
    items = {}
    for name, value in node.items():
        if isinstance(value, dict):
            items.update(_flatten(value, f"{prefix}{name}."))
        else:
            items[f"{prefix}{name}"] = value
    return items


def config_changes(cfg) -> str:
    """What ``cfg`` sets away from kddet's defaults, one ``KEY: value`` line each, sorted. Nodes a
    run leaves at their defaults stay out, so adding a config node (a new loss or backbone) keeps
    every cached run; a changed default is a change of code, which needs --retrain like any other."""
    defaults = get_cfg()
    add_kddet_config(defaults)
    defaults = _flatten(defaults)
    changed = {key: value for key, value in _flatten(cfg).items() if key not in defaults or defaults[key] != value}
    return "".join(f"{key}: {value!r}\n" for key, value in sorted(changed.items()))


def run_keys(config: Path, opts: Sequence[str], depends_on: str = "") -> Tuple[str, str]:
    """The cache keys of a run. ``key`` changes with anything that changes the run: the settings its
    resolved config (base files and options included) changes from the defaults, and the key of the
    run it learns from (its teacher). ``same_run`` leaves the output folder out, so that a run another
    table (tools/ablate.py) made is copied, not repeated."""
    resolved = load_config(config, opts)
    key = hashlib.sha1((config_changes(resolved) + depends_on).encode()).hexdigest()
    resolved.OUTPUT_DIR = ""
    return key, hashlib.sha1((config_changes(resolved) + depends_on).encode()).hexdigest()


def student_settings(config: Path, iters: int, extra_opts: Sequence[str] = ()) -> str:
    """A fingerprint of what a student of ``config`` trains for ``iters`` iterations, whatever its
    seed, device and output folder: a tool that quotes a table's seed spread for a run of its own
    (the demo) quotes it only when the two fingerprints match."""
    _, same_run = run_keys(config, [*map(str, schedule_opts(config, iters)), *map(str, extra_opts), "SEED", "0", "MODEL.DEVICE", "cpu"])
    return same_run


def _finished_record(run_dir: Path) -> dict:
    """The result record of a finished run in ``run_dir`` (one with its final weights, or one that
    diverged), else {}."""
    record_file = run_dir / "result.json"
    if not record_file.is_file():
        return {}
    record = json.loads(record_file.read_text())
    return record if record.get("diverged") or (run_dir / "model_final.pth").is_file() else {}


def _per_class_ap(bbox: dict) -> Dict[str, float]:
    """The per-class APs of a COCO evaluation's bbox results (keys "AP-<class>"), by class."""
    return {k[len("AP-"):]: v for k, v in bbox.items() if k.startswith("AP-")}


def _last_bbox_evaluation(metrics: List[dict]) -> Dict[str, float]:
    """The bbox results of the last evaluation in a run's metrics.json rows, without the "bbox/" prefix."""
    final = next(m for m in reversed(metrics) if "bbox/AP" in m)
    return {k[len("bbox/"):]: v for k, v in final.items() if k.startswith("bbox/")}


def _read_metrics(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines()]


def _with_per_class(record: dict, run_dir: Path) -> dict:
    """``record`` with the per-class APs of its run's last evaluation (runs recorded before the
    table had them are read again from their metrics.json, where it is kept)."""
    if "per_class" in record or record.get("diverged") or not (run_dir / "metrics.json").is_file():
        return record
    record = dict(record, per_class=_per_class_ap(_last_bbox_evaluation(_read_metrics(run_dir))))
    _write_atomically(run_dir / "result.json", record)
    return record


def _write_atomically(path: Path, record: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)  # a record is whole or absent


class Runner:
    """Runs tools/train_net.py jobs, several at a time, and caches each finished run's result."""

    def __init__(self, device: str, jobs: int, extra_opts: list, retrain: bool, cache_root: Path):
        self.device = device
        self.cache_root = cache_root
        self.extra_opts = extra_opts
        self.retrain = retrain
        self.threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        self.print_lock = threading.Lock()
        self.commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True).stdout.strip()

    def run(self, name: str, config: Path, out_dir: Path, opts: list, depends_on: str = "") -> dict:
        """Train and evaluate ``config``, or reuse its finished run; ``depends_on`` is the key of the
        run it learns from (its teacher)."""
        opts = [*map(str, opts), "MODEL.DEVICE", self.device, *self.extra_opts, "OUTPUT_DIR", str(out_dir)]
        key, same_run = run_keys(config, opts, depends_on)
        record_file = out_dir / "result.json"
        if not self.retrain:
            if _finished_record(out_dir).get("key") == key:
                self.log(name, f"reused {record_file}")
                return _with_per_class(_finished_record(out_dir), out_dir)
            source = self._find_same_run(same_run)
            if source is not None:
                if source != out_dir:  # the same run in place (the folder moved) only needs its new key
                    self._set_aside(out_dir)
                    shutil.copytree(source, out_dir)
                record = dict(_finished_record(out_dir), key=key)
                _write_atomically(record_file, record)
                self.log(name, f"reused a copy of {source}")
                return _with_per_class(record, out_dir)
        # detectron2 appends to metrics.json and resumes from last_checkpoint: start from nothing.
        self._set_aside(out_dir)
        out_dir.mkdir(parents=True)
        command = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(config), *opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        start = time.perf_counter()
        with open(out_dir / "stdout.txt", "w") as stdout:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        output = (out_dir / "stdout.txt").read_text()
        if proc.returncode != 0 and "FloatingPointError" in output:
            # A recipe that diverges on a seed is a result, not a failure of the table: kept and counted.
            record = {"key": key, "same_run": same_run, "config": str(config.relative_to(REPO)), "opts": opts,
                      "commit": self.commit, "diverged": True, "minutes": (time.perf_counter() - start) / 60}
            _write_atomically(record_file, record)
            self.log(name, "diverged (FloatingPointError), counted as such in the table")
            return record
        if proc.returncode != 0:
            tail = output.splitlines()[-30:]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}), see {out_dir}/stdout.txt:\n" + "\n".join(tail))
        metrics = _read_metrics(out_dir)
        bbox = _last_bbox_evaluation(metrics)
        record = {
            "key": key, "same_run": same_run, "config": str(config.relative_to(REPO)), "opts": opts, "commit": self.commit,
            "AP": bbox["AP"], "AP50": bbox["AP50"], "AP75": bbox["AP75"], "per_class": _per_class_ap(bbox),
            "iters": max(m["iteration"] for m in metrics if "total_loss" in m) + 1,
            "minutes": (time.perf_counter() - start) / 60,
        }
        _write_atomically(record_file, record)
        self.log(name, f"AP {record['AP']:.1f} after {record['iters']} iterations ({record['minutes']:.1f} min)")
        return record

    def _find_same_run(self, same_run: str):
        """The folder of a finished run under the cache root with this ``same_run`` key, or None."""
        for record_file in self.cache_root.rglob("result.json"):
            if _finished_record(record_file.parent).get("same_run") == same_run:
                return record_file.parent
        return None

    def _set_aside(self, out_dir: Path) -> None:
        """Empty ``out_dir`` for another run. A finished run there moves to superseded/ under the cache
        root, where _find_same_run still finds it (a recipe's weight changed and changed back, a
        study's variants reordered), unless superseded/ holds it already."""
        same_run = _finished_record(out_dir).get("same_run")
        if same_run:
            kept = self.cache_root / "superseded" / same_run
            if not kept.exists():
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(out_dir), str(kept))
        shutil.rmtree(out_dir, ignore_errors=True)

    def log(self, name: str, message: str) -> None:
        with self.print_lock:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def convert_missing_weights(configs: Sequence[Path]) -> None:
    """Convert the shipped ImageNet weights the configs start from (MobileNetV2's) if missing, once,
    before their runs start."""
    import convert_pretrained  # tools/ is not a package: found beside this file

    for config in dict.fromkeys(configs):
        weights = load_config(config).MODEL.WEIGHTS
        if weights and convert_pretrained.convert_shipped_if_missing(REPO / weights, REPO):
            print(f"Converted torchvision's MobileNetV2 ImageNet weights to {weights}")


def generate_splits() -> None:
    """Generate the shapes splits once, here, rather than by the first runs at once."""
    from detectron2.data import DatasetCatalog

    for split in ("kddet_shapes_train", "kddet_shapes_val", "kddet_shapes_test"):
        DatasetCatalog.get(split)


def train_teacher(runner: Runner, teacher_dir: Path, iters: int = 0) -> dict:
    """The teacher's run (``iters``: its config's own schedule when 0), trained or reused."""
    iters = iters or load_config(TEACHER_CONFIG).SOLVER.MAX_ITER
    return runner.run("teacher", TEACHER_CONFIG, teacher_dir, schedule_opts(TEACHER_CONFIG, iters))


def evaluate_teacher(teacher: dict, teacher_dir: Path, dataset: str, device: str) -> dict:
    """The teacher's record with its AP, AP50 and AP75 on ``dataset``: its run's own evaluation if that
    was on ``dataset``, else an evaluation of its final weights there, cached beside them."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from kddet.engine import Trainer

    cfg = load_config(teacher_dir / "config.yaml", ["MODEL.DEVICE", device, "OUTPUT_DIR", str(teacher_dir / f"eval_{dataset}")])
    if teacher.get("diverged") or tuple(cfg.DATASETS.TEST) == (dataset,):
        return teacher
    record_file = teacher_dir / f"eval_{dataset}.json"
    cached = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if cached.get("key") == teacher["key"] and "per_class" in cached:
        return dict(teacher, **cached)
    cfg.DATASETS.TEST = (dataset,)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(teacher_dir / "model_final.pth"))
    bbox = Trainer.test(cfg, model)["bbox"]
    evaluation = {"key": teacher["key"], "dataset": dataset, "AP": bbox["AP"], "AP50": bbox["AP50"], "AP75": bbox["AP75"],
                  "per_class": _per_class_ap(bbox)}
    _write_atomically(record_file, evaluation)
    return dict(teacher, **evaluation)


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(teacher: dict, runs: Dict[str, List[dict]]) -> List[dict]:
    """One row per model: AP/AP50/AP75 mean and std over seeds, the change against the student alone
    with its standard error and Welch degrees of freedom, and the fraction of the teacher-student AP
    gap that change recovers."""
    student_ap = [r["AP"] for r in runs["student"]]
    student_mean = statistics.fmean(student_ap)
    gap = teacher["AP"] - student_mean
    rows = []
    for name, all_records in runs.items():
        # Statistics over the seeds that finished; those that diverged are counted beside them.
        records = [r for r in all_records if not r.get("diverged")]
        row = {"name": name, "seeds": len(records), "diverged": len(all_records) - len(records),
               # The median: a run that shared the cores with other work does not move it.
               "minutes": statistics.median(r["minutes"] for r in all_records)}
        if not records:
            rows.append(dict(row, iters=0, AP=math.nan, AP_std=math.nan, AP50=math.nan, AP50_std=math.nan,
                             AP75=math.nan, AP75_std=math.nan, delta=math.nan, delta_se=math.nan,
                             delta_dof=math.nan, gap_recovered=math.nan, detectable=math.nan))
            continue
        row["iters"] = records[0]["iters"]
        for metric in ("AP", "AP50", "AP75"):
            row[metric], row[metric + "_std"] = mean_std([r[metric] for r in records])
        if all("per_class" in r for r in records):
            row["per_class"] = {c: mean_std([r["per_class"][c] for r in records]) for c in records[0]["per_class"]}
        ap = [r["AP"] for r in records]
        row["delta"] = row["AP"] - student_mean
        # Standard error of a difference of two means and its Welch-Satterthwaite degrees of freedom;
        # nan with a single seed.
        a, b = mean_std(ap)[1] ** 2 / len(ap), mean_std(student_ap)[1] ** 2 / len(student_ap)
        row["delta_se"] = math.sqrt(a + b)
        denominator = (a**2 / (len(ap) - 1) if len(ap) > 1 else math.nan) + (
            b**2 / (len(student_ap) - 1) if len(student_ap) > 1 else math.nan
        )
        row["delta_dof"] = (a + b) ** 2 / denominator if denominator > 0 else math.inf
        row["gap_recovered"] = row["delta"] / gap if gap > 0 else math.nan
        row["detectable"] = detectable_change(row)
        rows.append(row)
    return rows


def t_critical(dof: float) -> float:
    """The two-sided 95% critical value of Student's t at ``dof`` degrees of freedom, rounded down
    to the table's nearest (so never too lenient)."""
    if dof >= 30:
        return 1.96 if math.isinf(dof) else T_CRITICAL[30]
    return T_CRITICAL[max(d for d in T_CRITICAL if d <= max(dof, 1))]


def detectable_change(row: dict) -> float:
    """The smallest |ΔAP| the t-test of ``verdict`` calls a change, at the row's spread and seeds."""
    return t_critical(row["delta_dof"]) * row["delta_se"]


def verdict(row: dict) -> str:
    """Whether the change against the student alone stands out of seed-to-seed noise: a Welch t-test
    at 95% (two-sided, no correction for comparing many recipes), and at least the 0.1 AP the table
    prints."""
    if math.isnan(row["delta"]):
        return "every seed diverged"
    if math.isnan(row["delta_se"]):
        return "one seed"
    if abs(row["delta"]) < max(detectable_change(row), 0.1):
        return "within noise"
    return "helps" if row["delta"] > 0 else "hurts"


def seeds_cell(row: dict) -> str:
    """The seeds that finished, and those that diverged if any."""
    return f"{row['seeds']} + {row['diverged']} diverged" if row["diverged"] else str(row["seeds"])


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _pm_abs(value: float) -> str:
    return "n/a" if math.isnan(value) else f"±{value:.1f}"


def _percent(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:+.0f}%"


def format_markdown(teacher: dict, rows: List[dict], sizes: dict, setting: dict, chart_name: str) -> str:
    """results/embedded.md: the settings, teacher and student sizes, and one row per model."""
    student, recipes = rows[0], sorted(rows[1:], key=lambda r: -r["AP"])
    bench = BENCHMARKS[setting["benchmark"]]
    dataset = setting["dataset"]
    lines = [
        f"# Distillation on the embedded data set — benchmark `{setting['benchmark']}`, schedule `{setting['schedule']}`",
        "",
        f"Generated by `{' '.join(['python tools/make_results.py', *setting['argv']])}` at commit "
        f"`{setting['commit']}`; do not edit by hand.",
        "",
        f"COCO box AP on `{dataset}` ({setting['images']} images, 128 px). The teacher trained once "
        f"({teacher['iters']} iterations) and every recipe that needs a teacher learnt from it; the student alone "
        f"and each recipe trained {student['iters']} iterations with the first *seeds* of seeds 1, 2, 3, ...; "
        "mean ± standard deviation over seeds. "
        f"Device: {setting['device']}; {setting['jobs']} run(s) at a time.",
        "",
        "| model | parameters | GFLOPs / image (fvcore: a multiply-add is one FLOP) |",
        "|---|---:|---:|",
        f"| teacher (`{TEACHER_CONFIG.name}`) | {sizes['teacher'][0]:.2f} M | {sizes['teacher'][1]:.2f} |",
        f"| student (`{bench.student.relative_to(CONFIGS)}`), alone or distilled | {sizes['student'][0]:.2f} M | {sizes['student'][1]:.2f} |",
        "",
        "| model | seeds | AP | AP50 | AP75 | ΔAP vs student | smallest detectable ΔAP | gap recovered | verdict | "
        "train+eval min/run (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| teacher | 1 | {teacher['AP']:.1f} | {teacher['AP50']:.1f} | {teacher['AP75']:.1f} | | | | | {teacher['minutes']:.1f} |",
        f"| student alone | {student['seeds']} | {_pm(student['AP'], student['AP_std'])} | "
        f"{_pm(student['AP50'], student['AP50_std'])} | {_pm(student['AP75'], student['AP75_std'])} | | | | | {student['minutes']:.1f} |",
    ]
    for r in recipes:
        lines.append(
            f"| {r['name']} | {seeds_cell(r)} | {_pm(r['AP'], r['AP_std'])} | {_pm(r['AP50'], r['AP50_std'])} | "
            f"{_pm(r['AP75'], r['AP75_std'])} | {r['delta']:+.1f} | {_pm_abs(r['detectable'])} | {_percent(r['gap_recovered'])} | "
            f"{verdict(r)} | {r['minutes']:.1f} |"
        )
    gap = teacher["AP"] - student["AP"]
    lines += [
        "",
        f"Teacher-student gap: {gap:.1f} AP. *Gap recovered* is ΔAP / gap. *Verdict*: a ΔAP that a two-sided Welch "
        "t-test at 95% separates from the student alone (and of 0.1 AP or more) *helps* or *hurts*; *smallest "
        "detectable ΔAP* is the size of change that test needs at the row's spread and seeds; otherwise it is "
        "*within noise* of seed-to-seed variation. With many recipes tested against one baseline and no correction, "
        f"expect about one recipe in twenty to pass by chance. Recipes are in `{bench.folder.relative_to(REPO)}/<name>.yaml`; minutes "
        "are the median wall time of the row's runs, with the runs sharing the machine.",
        "",
        f"![AP per recipe]({chart_name})",
        "",
        *format_per_class(teacher, [dict(student, name="student alone"), *recipes]),
    ]
    return "\n".join(lines)


def format_per_class(teacher: dict, rows: List[dict]) -> List[str]:
    """The table's models again, AP per class (mean ± std over seeds): where a recipe gains or loses.
    Empty unless every row has them; the teacher's row where it has them (a study of the student
    alone evaluates no teacher)."""
    if not all("per_class" in r for r in rows):
        return []
    classes = list(teacher.get("per_class", rows[0]["per_class"]))
    lines = [
        "AP per class, mean ± std over the same seeds:",
        "",
        "| model | " + " | ".join(classes) + " |",
        "|---|" + "---:|" * len(classes),
    ]
    if "per_class" in teacher:
        lines.append("| teacher | " + " | ".join(f"{teacher['per_class'][c]:.1f}" for c in classes) + " |")
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_pm(*r["per_class"][c]) for c in classes) + " |")
    return lines + [""]


def draw_chart(teacher: dict, rows: List[dict], path: Path, title: str, dataset: str) -> None:
    """A bar per model, AP mean ± std, coloured by verdict, with the teacher and student as lines."""
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
    ax.set_xlabel(f"COCO box AP on {dataset} (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_sizes(student_config: Path, device: str, opts: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """fvcore parameters (M) and GFLOPs of teacher and student on one validation image."""
    import warnings

    import torch
    from detectron2.data import DatasetCatalog, detection_utils

    from kddet.complexity import params_and_flops

    first = DatasetCatalog.get("kddet_shapes_val")[0]
    image = torch.as_tensor(detection_utils.read_image(first["file_name"], format="BGR").transpose(2, 0, 1).copy())
    opts = ["MODEL.DEVICE", device, *opts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings from torch and fvcore, none actionable
        return {name: params_and_flops(load_config(config, opts), image.to(device))
                for name, config in (("teacher", TEACHER_CONFIG), ("student", student_config))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=BENCHMARKS, default="pretrained",
                        help="the student and its recipes: ImageNet-pretrained MobileNetV2 (quoted), or the slim R8 from scratch with every loss")
    parser.add_argument("--schedule", choices=SCHEDULES, default="full", help="teacher's and students' share of their configs' schedules")
    parser.add_argument("--student-iters", type=int, help="students' iterations instead of the schedule's")
    parser.add_argument("--teacher-iters", type=int, help="the teacher's iterations instead of its config's")
    parser.add_argument("--recipes", nargs="+", help="recipe names in the benchmark's folder (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"seeds of every model (default: {STUDENT_SEEDS} for the "
                        f"student, {FIVE_SEEDS} for {sorted(FIVE_SEED_MODELS)}, {SEEDS} for the rest)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: 2 on cpu, sharing its cores; 1 on cuda)")
    parser.add_argument("--retrain", action="store_true", help="train every run again, reusing none")
    parser.add_argument("--output", default=str(REPO / "output/results"), help="folder for the runs, one subfolder per tag")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the table and chart go")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options added to every run")
    args = parser.parse_args()
    bench = BENCHMARKS[args.benchmark]
    recipes = list(dict.fromkeys(args.recipes or all_recipes(args.benchmark)))
    seeds = {name: seeds_of(name, args.seeds) for name in ["student", *recipes]}
    unknown = sorted(set(recipes) - set(all_recipes(args.benchmark)))
    if unknown:
        sys.exit(f"Unknown recipes {unknown}; {bench.folder.relative_to(REPO)}/ has {all_recipes(args.benchmark)}.")
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    generate_splits()
    convert_missing_weights([recipe_config(args.benchmark, name) for name in seeds])
    jobs = args.jobs or (2 if args.device == "cpu" else 1)

    defaults = (args.student_iters, args.teacher_iters, recipes, args.seeds, args.opts) == (None, None, all_recipes(args.benchmark), None, [])
    tag = args.schedule if defaults else "custom"
    teacher_iters, student_iters = schedule_iters(args.schedule)
    teacher_iters, student_iters = args.teacher_iters or teacher_iters, args.student_iters or student_iters
    output = Path(args.output).resolve() / tag
    runner = Runner(args.device, jobs, args.opts, args.retrain, cache_root=Path(args.output).resolve())
    # A teacher trained as its config says serves every tag; another one stays in its tag's folder.
    own_teacher = args.opts or teacher_iters != load_config(TEACHER_CONFIG).SOLVER.MAX_ITER
    teacher_dir = (output if own_teacher else output.parent) / "teacher"

    def student_run(name: str, seed: int) -> dict:
        config = recipe_config(args.benchmark, name)
        opts = ["SEED", seed, *schedule_opts(config, student_iters)]
        teacher_key = ""
        if losses_need_teacher(load_config(config)):
            teacher_key = teacher_job.result()["key"]  # waits for the teacher
            opts += ["KD.TEACHER.WEIGHTS", teacher_dir / "model_final.pth"]
            if args.opts:  # the teacher as trained, with the same extra options
                opts += ["KD.TEACHER.CONFIG_FILE", teacher_dir / "config.yaml"]
        return runner.run(f"{name} seed {seed}", config, output / run_folder(args.benchmark, name) / f"seed{seed}", opts, teacher_key)

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        # Submitted first, the teacher starts before any run can wait for it, whatever the pool size.
        teacher_job = pool.submit(train_teacher, runner, teacher_dir, teacher_iters)
        # Runs without a teacher first, so that they fill the other slots while the teacher trains.
        needs_teacher = {name: losses_need_teacher(load_config(recipe_config(args.benchmark, name))) for name in seeds}
        order = sorted(seeds, key=lambda name: needs_teacher[name])
        jobs_by_name = {name: [pool.submit(student_run, name, seed) for seed in seeds[name]] for name in order}
        dataset = load_config(bench.student).DATASETS.TEST[0]
        # The teacher's AP on the benchmark's test set, for the gap (an evaluation if it was not its own).
        teacher_eval_job = pool.submit(lambda: evaluate_teacher(teacher_job.result(), teacher_dir, dataset, args.device))
        try:
            teacher_eval_job.exception()  # a Ctrl-C while waiting here stops the queued runs too
            for job in sum(jobs_by_name.values(), []):
                job.exception()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    # A failed teacher fails every distilled run with the same message: report it once.
    failures = list(dict.fromkeys(str(job.exception()) for job in [teacher_job, teacher_eval_job, *sum(jobs_by_name.values(), [])] if job.exception()))
    if failures:
        sys.exit("Runs failed (finished runs are kept and reused on the next call):\n\n" + "\n\n".join(failures))

    teacher = teacher_eval_job.result()
    rows = summarize(teacher, {name: [job.result() for job in jobs] for name, jobs in jobs_by_name.items()})
    from detectron2.data import DatasetCatalog

    setting = {"benchmark": args.benchmark, "dataset": dataset, "images": len(DatasetCatalog.get(dataset)), "schedule": tag,
               "seeds": seeds, "device": args.device, "jobs": jobs, "argv": sys.argv[1:], "commit": runner.commit,
               "student_settings": student_settings(bench.student, student_iters, args.opts)}
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = bench.stem if tag == "full" else f"{bench.stem}_{tag}"
    draw_chart(teacher, rows, results_dir / f"{stem}.png", f"kddet on the embedded data set, {args.benchmark} student, schedule {tag}", dataset)
    markdown = format_markdown(teacher, rows, model_sizes(bench.student, args.device, args.opts), setting, f"{stem}.png")
    (results_dir / f"{stem}.md").write_text(markdown)
    # The same rows for tools that quote the table (the demo reads the seed spread from it).
    (results_dir / f"{stem}.json").write_text(json.dumps({"teacher": teacher, "rows": rows, "setting": setting}, indent=1))
    print(f"\n{markdown}\nWritten {results_dir / stem}.md and .png in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
