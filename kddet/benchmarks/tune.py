"""Run the searches of kddet/benchmarks/searches.py: each tunes a recipe on kddet_shapes_val against the
results tables' teacher (trained first if missing) and copies its report, chart and chosen setting to
results/tuning/<name>/, beside its search space.

    python -m kddet.benchmarks.tune review_kd fgd      # these searches (resumed if interrupted)
    python -m kddet.benchmarks.tune all --jobs 2       # every search, two at a time

The chosen setting is then written into the recipe by hand, with a comment naming the search: the
recipe file stays the one place that says what a recipe is.
"""

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kddet

kddet.setup()

from .runner import Runner, convert_missing_weights, generate_splits, portable, train_teacher  # noqa: E402
from .schedule import REPO  # noqa: E402
from .searches import SEARCHES, VAL, Search  # noqa: E402

COMMAND = "python -m kddet.benchmarks.tune"


def run_search(search: Search, teacher_weights: Path, teacher_key: str, output: Path, threads: int) -> int:
    """tools/tune_recipe.py for ``search`` in a subprocess on ``threads`` threads; its outcome copied
    to results/tuning/<name>/. The study is kept per teacher (``teacher_key``, its run's key), so that
    a search resumed after the teacher was trained again starts afresh instead of mixing teachers."""
    study_dir = output / search.name / teacher_key[:12]
    command = [
        sys.executable, str(REPO / "tools/tune_recipe.py"), "--recipe", portable(search.config),
        "--space", portable(search.space), "--budget", str(search.budget), "--study-dir", portable(study_dir),
        "--dataset", VAL, "--eval-period", str(search.eval_period), "--startup-trials", str(search.startup_trials),
        "--seeds", *map(str, search.seeds), "--output", portable(search.space.parent / "chosen.yaml"),
        "KD.TEACHER.WEIGHTS", portable(teacher_weights),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / "stdout.txt", "a") as log:
        returncode = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if returncode == 0:  # the chosen recipe is written there already (--output)
        for produced in ("report.md", "report.png"):
            shutil.copy(study_dir / produced, search.space.parent / produced)
    print(f"{search.name}: {'done' if returncode == 0 else f'failed, see {study_dir}/stdout.txt'}", flush=True)
    return returncode


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "searches", nargs="+", choices=["all", *SEARCHES], metavar="SEARCH", help=f"{sorted(SEARCHES)} or all"
    )
    parser.add_argument("--jobs", type=int, default=2, help="searches at a time, sharing the CPU's cores")
    parser.add_argument("--output", default=str(REPO / "output/results"), help="the results tables' runs (the teacher)")
    parser.add_argument("--study-root", default=str(REPO / "output/tune"), help="where the searches' trials go")
    args = parser.parse_args(argv)
    searches = [SEARCHES[n] for n in (SEARCHES if "all" in args.searches else dict.fromkeys(args.searches))]
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    generate_splits()
    convert_missing_weights([s.config for s in searches])
    output = Path(args.output).resolve()
    runner = Runner("cpu", args.jobs, [], False, cache_root=output)
    teacher = train_teacher(runner, output / "teacher")
    weights, root = output / "teacher/model_final.pth", Path(args.study_root)
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(lambda s: run_search(s, weights, teacher["key"], root, threads), searches))
    if any(codes):
        sys.exit("Some searches failed; run the same command again to resume them.")


if __name__ == "__main__":
    main()
