"""Ablations on the embedded data set: one recipe's options varied, each variant over seeds.

Each study of kddet.benchmarks.studies is a list of variants (a recipe of configs/shapes/ and the
options that make the variant); every variant is trained with each seed through tools/train_net.py,
exactly as the results tables train their recipes (same schedule, same teacher, same cache: a run a
table already made with the same resolved config is reused), and the study's table goes to
results/ablations/<study>.md with its runs in <study>.json: AP mean ± std, the change against the
study's baseline (the student alone, the MobileNetV2 student alone for the *pretrained studies, or
the recipe the study names) with the same seeds, and the verdicts of the results tables' tests.

    python -m kddet.benchmarks.ablate fitnet                 # -> results/ablations/fitnet.md
    python -m kddet.benchmarks.ablate fgfi balance --seeds 1 2 3
    python -m kddet.benchmarks.ablate all                    # every study
"""

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

from kddet.config import load_config  # noqa: E402
from kddet.losses import losses_need_teacher  # noqa: E402

from .recipes import BENCHMARKS, SEEDS, all_recipes, config_of, run_folder, seeds_of  # noqa: E402
from .report import format_ablation  # noqa: E402
from .results import command_line, rerender  # noqa: E402
from .runner import Runner, convert_missing_weights, evaluate_teacher, generate_splits, git_commit  # noqa: E402
from .runner import train_teacher  # noqa: E402
from .schedule import REPO, STUDENT_CONFIG, schedule_opts  # noqa: E402
from .stats import summarize  # noqa: E402
from .studies import STUDIES, Study  # noqa: E402

COMMAND = "python -m kddet.benchmarks.ablate"


def study_seeds(study: Study, recipe: str, options: Sequence, chosen: Sequence[int] = ()) -> List[int]:
    """The seeds of one model of ``study``: those chosen on the command line, else the study's, else a
    recipe as committed (the baseline too) takes its results table's seeds and a variant three."""
    chosen = chosen or study.seeds
    if options:
        return list(chosen or SEEDS)
    return seeds_of(recipe, chosen)


def split_opts(recipe: str, split: str) -> list:
    """The options that score ``recipe`` on ``split``: none if its config does already (a pretrained
    recipe's config names the test set, which a study that chooses a setting must not read)."""
    return [] if tuple(load_config(config_of(recipe)).DATASETS.TEST) == (split,) else ["DATASETS.TEST", (split,)]


def out_dir(output: Path, study: str, index: int, recipe: str, options: Sequence, split: str = "") -> Path:
    """Where a model's runs go: a recipe of the results tables as committed (the student alone too)
    shares the table's runs, another recipe as committed (or one scored on another split than its
    config's) is shared by the studies that train it, and a variant has its study's folder."""
    if options:
        return output / "ablation" / study / str(index)
    if split and split_opts(recipe, split):
        return output / "ablation" / split / recipe
    tables = {run_folder(bench, name) for bench in BENCHMARKS for name in ["student", *all_recipes(bench)]}
    return output / ("full" if recipe in tables else "ablation") / recipe


def write_study(results_dir: Path, study: Study, teacher: dict, rows: List[dict], setting: dict) -> Path:
    """results/ablations/<study>.md and its JSON (the runs' values, for rendering it again)."""
    path = results_dir / "ablations" / f"{study.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_ablation(study, teacher, rows, setting))
    table = {"teacher": teacher, "rows": rows, "setting": setting}
    path.with_suffix(".json").write_text(json.dumps(table, indent=1))
    return path


def report_study(results_dir: Path, study: Study) -> Path:
    """Render ``study``'s table again from its JSON, without training."""
    path = results_dir / "ablations" / f"{study.name}.json"
    if not path.is_file():
        sys.exit(f"No {path}: tables made before the studies' JSON have none; run `{COMMAND} {study.name}`.")
    table = json.loads(path.read_text())
    if len(table["rows"]) != len(study.variants) + 1:
        sys.exit(f"{path} has {len(table['rows']) - 1} variants, the study {len(study.variants)}: run it again.")
    teacher, rows, _ = rerender(table)
    command = f"{COMMAND} --report-only {study.name}"
    setting = dict(table["setting"], rendered={"command": command, "commit": git_commit()})
    return write_study(results_dir, study, teacher, rows, setting)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "studies", nargs="+", choices=["all", *STUDIES], metavar="STUDY", help=f"{sorted(STUDIES)} or all"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int,
        help="seeds of every run (default: the study's, else the results table's for the baseline and a recipe "
        f"as committed, already trained there, and {SEEDS} for a variant)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: 2 on cpu, 1 on cuda)")
    parser.add_argument("--output", default=str(REPO / "output/results"), help="folder of the results tables' runs")
    parser.add_argument("--results-dir", default=str(REPO / "results"))
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: render the studies' tables again from their JSON (results/ablations/<study>.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    studies = [STUDIES[name] for name in (STUDIES if "all" in args.studies else dict.fromkeys(args.studies))]
    if args.report_only:
        for study in studies:
            print(f"Rendered {report_study(Path(args.results_dir), study)} again from its JSON")
        return
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    generate_splits()
    jobs = args.jobs or (2 if args.device == "cpu" else 1)
    output = Path(args.output).resolve()
    runner = Runner(args.device, jobs, [], retrain=False, cache_root=output)
    iters = load_config(STUDENT_CONFIG).SOLVER.MAX_ITER
    recipes = [s.baseline for s in studies] + [v.recipe for s in studies for v in s.variants]
    convert_missing_weights([config_of(recipe) for recipe in recipes])
    teacher_dir = output / "teacher"
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        # A study of the student alone neither waits for nor trains the teacher (a results table may be).
        needs_teacher = any(losses_need_teacher(load_config(config_of(recipe))) for recipe in recipes)
        teacher_job = pool.submit(train_teacher, runner, teacher_dir) if needs_teacher else None

        def run(name: str, recipe: str, options: Sequence, folder: Path, seed: int, split: str) -> dict:
            config = config_of(recipe)
            opts = ["SEED", seed, *schedule_opts(config, iters), *split_opts(recipe, split), *options]
            teacher_key = ""
            if losses_need_teacher(load_config(config)):
                teacher_key = teacher_job.result()["key"]
                opts += ["KD.TEACHER.WEIGHTS", runner.path_opt(teacher_dir / "model_final.pth")]
            return dict(runner.run(f"{name} seed {seed}", config, folder / f"seed{seed}", opts, teacher_key), seed=seed)

        def submit(name: str, study: Study, index: int, recipe: str, options: Sequence) -> list:
            folder = out_dir(output, study.name, index, recipe, options, study.split)
            seeds = study_seeds(study, recipe, options, args.seeds)
            return [pool.submit(run, name, recipe, options, folder, s, study.split) for s in seeds]

        # The baselines once for every study that shares one with the same seeds.
        baseline_jobs: Dict[Tuple[str, tuple, str], list] = {}
        for study in studies:
            key = (study.baseline, tuple(study_seeds(study, study.baseline, (), args.seeds)), study.split)
            if key not in baseline_jobs:
                baseline_jobs[key] = submit(study.baseline, study, 0, study.baseline, ())
        study_jobs = {
            study.name: [
                submit(f"{study.name}/{i}", study, i, v.recipe, v.options) for i, v in enumerate(study.variants)
            ]
            for study in studies
        }
        for study in studies:
            # The teacher's AP on the study's split, for the gap recovered.
            teacher = {"AP": math.nan}
            if teacher_job:
                teacher = evaluate_teacher(teacher_job.result(), teacher_dir, study.split, args.device)
            baseline = baseline_jobs[
                (study.baseline, tuple(study_seeds(study, study.baseline, (), args.seeds)), study.split)
            ]
            runs = {"baseline": [job.result() for job in baseline]}
            runs.update({str(i): [job.result() for job in jobs_] for i, jobs_ in enumerate(study_jobs[study.name])})
            rows = summarize(teacher, runs)
            setting = {
                "command": command_line(COMMAND, sys.argv[1:] if argv is None else argv), "commit": runner.commit,
                "dataset": study.split, "baseline_distilled": bool(load_config(study.baseline_config).KD.LOSSES),
            }  # fmt: skip
            path = write_study(Path(args.results_dir), study, teacher, rows, setting)
            print(path.read_text())
    print(f"Done in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
