"""The results tables: teacher, student baseline and every recipe of a benchmark on the embedded data set.

Three benchmarks share one teacher (the slim R18 of configs/shapes/):
- ``pretrained`` (results/embedded.md, the quoted table): the student is MobileNetV2-FPN from
  torchvision's ImageNet weights, as users start one, with the recipes of configs/shapes/mobilenet_v2/,
  evaluated on kddet_shapes_test (2000 images);
- ``wide`` (results/embedded_wide.md): the headline recipe on its student, the same MobileNetV2-FPN
  with the teacher's neck and head widths (configs/shapes/mobilenet_v2_wide/), on kddet_shapes_test;
- ``scratch`` (results/embedded_scratch.md): the slim R8 student trained from random weights, with
  every recipe of configs/shapes/ (every registered loss) and the pretrained student's recipes as
  shipped (``transfer/<name>``, recipes.TRANSFERS), evaluated on kddet_shapes_val (200 images).

Trains the teacher once, then the student alone, the headline recipe and FitNets (ten seeds) and each
other recipe (five seeds for the teacher-free baseline, the card's methods, the newer methods and the
combined recipes, three for the rest), all through tools/train_net.py (each run ends with COCO
evaluation), evaluates the teacher on the benchmark's test set, and writes results/<stem>.md, .json
and .png: AP, AP50, AP75 mean ± std over seeds, the change against the student with Welch's t-test
(each row alone, and with Holm's correction over the table), the fraction of the teacher-student gap
recovered, parameters and FLOPs. The JSON holds every run's values, so that --report-only renders
the table again, exactly, without training.

Runs go to output/results/<tag>/<recipe>/seed<N>/ and the teacher to output/results/teacher/, shared by
every tag that trains it as its config says. A finished run is reused while its resolved config (output
folder included) and its teacher are unchanged, so an interrupted call picks up where it stopped; after
changing kddet's code, pass --retrain. Any choice other than a schedule's defaults (recipes, seeds,
iterations, config options) is tagged `custom` and written beside, never over, the quoted table.

    python -m kddet.benchmarks.results                        # full: the configs' schedules (quoted)
    python -m kddet.benchmarks.results --benchmark scratch    # every loss, slim student from scratch
    python -m kddet.benchmarks.results --schedule cpu-short   # students at half the iterations
    python -m kddet.benchmarks.results --schedule demo        # what tools/demo.py trains -> embedded_demo.md
    python -m kddet.benchmarks.results --recipes fitnet kd --seeds 1 2 --jobs 1   # -> embedded_custom.md
    python -m kddet.benchmarks.results --report-only results/embedded.json        # its .md and .png again
    python -m kddet.benchmarks.results --recipes dkd fgd --add-to results/embedded.json  # new rows, same table

--add-to trains the named recipes and adds their rows to a table (replacing rows of the same name)
without training its other rows again, only once this machine has reproduced the table's teacher and
student alone exactly: same teacher settings, same teacher AP, same per-seed student APs. Otherwise it
stops, and the table has to be made again as a whole.
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

from .cache import student_settings  # noqa: E402
from .recipes import BENCHMARKS, CHOSEN_ON_TEST, FIVE_SEED_MODELS, FIVE_SEEDS, SEEDS, TEN_SEEDS  # noqa: E402
from .recipes import all_recipes, recipe_config, recipe_options, run_folder, seeds_of  # noqa: E402
from .report import draw_chart, format_markdown  # noqa: E402
from .runner import Runner, convert_missing_weights, evaluate_teacher, generate_splits, git_commit  # noqa: E402
from .runner import portable, train_teacher  # noqa: E402
from .searches import SEARCHES, VAL  # noqa: E402
from .schedule import REPO, SCHEDULES, TEACHER_CONFIG, schedule_iters, schedule_opts  # noqa: E402
from .stats import compare, summarize  # noqa: E402

COMMAND = "python -m kddet.benchmarks.results"
WHERE_OPTIONS = ("--output", "--results-dir")  # where runs and tables go, not what they hold


def command_line(prog: str, argv: Sequence[str]) -> str:
    """The command that made a table, as the table quotes it: without the folders it wrote to, which
    name the machine rather than the runs."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in WHERE_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in WHERE_OPTIONS)):
            kept.append(arg)
    return " ".join([prog, *kept])


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
        return {
            name: params_and_flops(load_config(config, opts), image.to(device))
            for name, config in (("teacher", TEACHER_CONFIG), ("student", student_config))
        }


def choosing_splits(benchmark: str, names: Sequence[str], test: str) -> dict:
    """Which split chose the settings of each recipe in ``names``, for the table to say: those in
    CHOSEN_ON_TEST on ``test``, and of the rest those of a search that has chosen
    (results/tuning/<name>/chosen.yaml) on VAL. A recipe stays in CHOSEN_ON_TEST until it carries
    its search's choice."""
    searched = {s.recipe for s in SEARCHES.values() if (s.space.parent / "chosen.yaml").is_file()}
    on_test = [n for n in names if n in CHOSEN_ON_TEST]
    return {
        "val": VAL, "test": test,
        "searched": [n for n in names if run_folder(benchmark, n) in searched and n not in on_test],
        "on_test": on_test,
    }  # fmt: skip


def write_table(stem: Path, teacher: dict, rows: List[dict], sizes: dict, setting: dict) -> str:
    """``stem``.md, .png and .json of a table; the markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    if setting["benchmark"] != "scratch":  # its rows' settings are chosen for its test set's table
        setting["chosen_on"] = choosing_splits(
            setting["benchmark"], [row["name"] for row in rows[1:]], setting["dataset"]
        )
    title = f"kddet on the embedded data set, {setting['benchmark']} student, schedule {setting['schedule']}"
    draw_chart(teacher, rows, stem.with_suffix(".png"), title, setting["dataset"])
    markdown = format_markdown(teacher, rows, sizes, setting, f"{stem.name}.png")
    stem.with_suffix(".md").write_text(markdown)
    # The same rows for tools that quote the table (the demo reads the seed spread from it).
    table = {"teacher": teacher, "rows": rows, "setting": setting, "sizes": sizes}
    stem.with_suffix(".json").write_text(json.dumps(table, indent=1))
    return markdown


def rerender(table: dict) -> Tuple[dict, List[dict], dict]:
    """The teacher, rows (statistics computed again) and sizes of a table's JSON. Rows with their runs'
    values are summarised from them; older ones, which hold their means, stds and seeds only, are
    compared from those, which the statistics need and nothing else."""
    teacher, rows = table["teacher"], table["rows"]
    if all("runs" in row for row in rows):
        rows = summarize(teacher, {row["name"]: row["runs"] for row in rows})
    else:
        rows = compare(teacher, rows)
    return teacher, rows, table.get("sizes")


def check_addable(table: dict, args: argparse.Namespace) -> None:
    """Stop unless the runs ``args`` asks for can join ``table``: same benchmark, the student trained as
    the table's was, the same extra options and the table's student seeds."""
    setting = table["setting"]
    _, student_iters = schedule_iters(args.schedule)
    student_iters = args.student_iters or student_iters
    problems = []
    if setting["benchmark"] != args.benchmark:
        problems.append(f"the table's benchmark is {setting['benchmark']}, not {args.benchmark} (--benchmark)")
    if setting.get("extra_opts", []) != args.opts:
        problems.append(f"the table's runs had the extra options {setting.get('extra_opts', [])}, these {args.opts}")
    fingerprint = setting.get("student_settings")
    if fingerprint and fingerprint != student_settings(BENCHMARKS[args.benchmark].student, student_iters, args.opts):
        problems.append("its student trained otherwise (--schedule, --student-iters)")
    if seeds_of("student", args.seeds) != setting["seeds"]["student"]:
        problems.append(f"its student alone has the seeds {setting['seeds']['student']} (--seeds)")
    if problems:
        sys.exit(f"Cannot add rows to {args.add_to}: " + "; ".join(problems) + ".")


def not_reproduced(table: dict, teacher: dict, student_runs: List[dict]) -> str:
    """Why ``teacher`` and the student alone's ``student_runs`` do not reproduce ``table``'s exactly (the
    teacher's settings and AP, the student's per-seed APs, or their mean and spread for a table that
    kept no per-seed values), or "" if they do."""
    old_teacher, old_student = table["teacher"], table["rows"][0]
    same_teacher = (
        old_teacher.get("same_run") == teacher.get("same_run") and abs(old_teacher["AP"] - teacher["AP"]) < 1e-9
    )
    student = summarize(teacher, {"student": student_runs})[0]
    if "runs" in old_student:
        same_student = [r.get("AP") for r in old_student["runs"]] == [r.get("AP") for r in student_runs]
    else:
        same_student = old_student["seeds"] == student["seeds"] and all(
            abs(old_student[k] - student[k]) < 1e-9 or math.isnan(old_student[k]) for k in ("AP", "AP_std")
        )
    if same_teacher and same_student:
        return ""
    return (
        f"The table's teacher (AP {old_teacher['AP']:.4f}) and student alone ({old_student['AP']:.4f} ± "
        f"{old_student['AP_std']:.4f}, {old_student['seeds']} seeds) were not reproduced here (teacher "
        f"{teacher['AP']:.4f}, student {student['AP']:.4f} ± {student['AP_std']:.4f}, {student['seeds']} seeds): "
        "rows trained against them would not compare. Make the table again as a whole (without --add-to)."
    )


def add_rows(table: dict, rows: List[dict], addition: dict) -> Tuple[dict, List[dict], dict]:
    """The teacher, rows and setting of ``table`` with ``rows`` (the student alone first, then recipes)
    added, replacing rows of the same name, and without the rows of recipes its benchmark no longer has;
    ``addition`` (command, commit, seeds) is recorded in its setting. The student alone's runs must
    reproduce the table's (not_reproduced)."""
    old_teacher, old_student = table["teacher"], table["rows"][0]
    added = {row["name"]: row for row in rows[1:]}
    recipes = all_recipes(table["setting"]["benchmark"])
    kept = [row for row in table["rows"][1:] if row["name"] not in added and row["name"] in recipes]
    dropped = [row["name"] for row in table["rows"][1:] if row["name"] not in recipes]
    # The student's runs are the table's, now with their per-seed values.
    merged = compare(old_teacher, [dict(old_student, runs=rows[0]["runs"]), *kept, *added.values()])
    setting = dict(table["setting"])
    seeds = {name: s for name, s in setting["seeds"].items() if name not in dropped}
    setting["seeds"] = dict(seeds, **{name: addition["seeds"][name] for name in added})
    record = {"command": addition["command"], "commit": addition["commit"], "recipes": list(added), "dropped": dropped}
    setting["added"] = [*setting.get("added", []), record]
    return old_teacher, merged, setting


def report_only(paths: Sequence[Path], device: str) -> None:
    """Render each table of ``paths`` (their JSON) again, without training."""
    for path in paths:
        table = json.loads(path.read_text())
        teacher, rows, sizes = rerender(table)
        setting = table["setting"]
        if sizes is None:  # a table older than the sizes in its JSON: measured again, the models are cheap
            bench = BENCHMARKS[setting["benchmark"]]
            sizes = model_sizes(bench.student, device, setting.get("extra_opts", []))
        setting["rendered"] = {"command": f"{COMMAND} --report-only {portable(path)}", "commit": git_commit()}
        write_table(path.with_suffix(""), teacher, rows, sizes, setting)
        print(f"Rendered {path.with_suffix('.md')} and .png again from {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--benchmark", choices=BENCHMARKS, default="pretrained",
        help="the student and its recipes: ImageNet-pretrained MobileNetV2 (quoted), the headline recipe on "
        "its wide MobileNetV2, or the slim R8 from scratch with every loss",
    )  # fmt: skip
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="full",
        help="teacher's and students' share of their configs' schedules",
    )
    parser.add_argument("--student-iters", type=int, help="students' iterations instead of the schedule's")
    parser.add_argument("--teacher-iters", type=int, help="the teacher's iterations instead of its config's")
    parser.add_argument("--recipes", nargs="+", help="recipe names in the benchmark's folder (default: all)")
    parser.add_argument(
        "--seeds", nargs="+", type=int,
        help=f"seeds of every model (default: {TEN_SEEDS} for the student and the headline recipe, "
        f"{FIVE_SEEDS} for {sorted(FIVE_SEED_MODELS)}, {SEEDS} for the rest)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--jobs", type=int, help="trainings at a time (default: 2 on cpu, sharing its cores; 1 on cuda)"
    )
    parser.add_argument("--retrain", action="store_true", help="train every run again, reusing none")
    parser.add_argument(
        "--output", default=str(REPO / "output/results"), help="folder for the runs, one subfolder per tag"
    )
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the table and chart go")
    parser.add_argument(
        "--report-only", nargs="*", type=Path, metavar="JSON",
        help="train nothing: render these tables' .md and .png again from their JSON (default: every table of "
        "--results-dir)",
    )  # fmt: skip
    parser.add_argument(
        "--add-to", type=Path, metavar="JSON",
        help="add the --recipes' rows to this table (its JSON) instead of writing a table of their own",
    )  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config options added to every run")
    args = parser.parse_args(argv)
    if args.add_to and not args.recipes:
        parser.error("--add-to adds the rows of --recipes: name them")
    if args.add_to:  # before any training: a table these runs cannot join stops here
        check_addable(json.loads(args.add_to.read_text()), args)
    if args.report_only is not None:
        report_only(args.report_only or sorted(Path(args.results_dir).glob("embedded*.json")), args.device)
        return
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

    chosen = (args.student_iters, args.teacher_iters, recipes, args.seeds, args.opts)
    tag = args.schedule if chosen == (None, None, all_recipes(args.benchmark), None, []) else "custom"
    teacher_iters, student_iters = schedule_iters(args.schedule)
    teacher_iters, student_iters = args.teacher_iters or teacher_iters, args.student_iters or student_iters
    output = Path(args.output).resolve() / tag
    runner = Runner(args.device, jobs, args.opts, args.retrain, cache_root=Path(args.output).resolve())
    # A teacher trained as its config says serves every tag; another one stays in its tag's folder.
    own_teacher = args.opts or teacher_iters != load_config(TEACHER_CONFIG).SOLVER.MAX_ITER
    teacher_dir = (output if own_teacher else output.parent) / "teacher"

    def student_run(name: str, seed: int) -> dict:
        config = recipe_config(args.benchmark, name)
        opts = ["SEED", seed, *recipe_options(args.benchmark, name), *schedule_opts(config, student_iters)]
        teacher_key = ""
        if losses_need_teacher(load_config(config)):
            teacher_key = teacher_job.result()["key"]  # waits for the teacher
            opts += ["KD.TEACHER.WEIGHTS", runner.path_opt(teacher_dir / "model_final.pth")]
            if args.opts:  # the teacher as trained, with the same extra options
                opts += ["KD.TEACHER.CONFIG_FILE", runner.path_opt(teacher_dir / "config.yaml")]
        out_dir = output / run_folder(args.benchmark, name) / f"seed{seed}"
        return dict(runner.run(f"{name} seed {seed}", config, out_dir, opts, teacher_key), seed=seed)

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        # Submitted first, the teacher starts before any run can wait for it, whatever the pool size.
        teacher_job = pool.submit(train_teacher, runner, teacher_dir, teacher_iters)
        # Runs without a teacher first, so that they fill the other slots while the teacher trains.
        needs_teacher = {name: losses_need_teacher(load_config(recipe_config(args.benchmark, name))) for name in seeds}
        order = sorted(seeds, key=lambda name: needs_teacher[name])
        dataset = load_config(bench.student).DATASETS.TEST[0]
        jobs_by_name = {"student": [pool.submit(student_run, "student", seed) for seed in seeds["student"]]}

        def evaluate():  # the teacher's AP on the benchmark's test set, for the gap
            return evaluate_teacher(teacher_job.result(), teacher_dir, dataset, args.device)

        teacher_eval_job = None
        if args.add_to:  # a table this machine does not reproduce stops before any recipe trains
            # After the student alone's runs, so that it does not hold a slot waiting for the teacher.
            teacher_eval_job = pool.submit(evaluate)
            failures = [str(job.exception()) for job in [teacher_eval_job, *jobs_by_name["student"]] if job.exception()]
            problem = "\n\n".join(dict.fromkeys(failures)) or not_reproduced(
                json.loads(args.add_to.read_text()),
                teacher_eval_job.result(),
                [job.result() for job in jobs_by_name["student"]],
            )
            if problem:
                sys.exit(problem)
        for name in order:
            if name != "student":
                jobs_by_name[name] = [pool.submit(student_run, name, seed) for seed in seeds[name]]
        teacher_eval_job = teacher_eval_job or pool.submit(evaluate)
        try:
            teacher_eval_job.exception()  # a Ctrl-C while waiting here stops the queued runs too
            for job in sum(jobs_by_name.values(), []):
                job.exception()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    # A failed teacher fails every distilled run with the same message: report it once.
    all_jobs = [teacher_job, teacher_eval_job, *sum(jobs_by_name.values(), [])]
    failures = list(dict.fromkeys(str(job.exception()) for job in all_jobs if job.exception()))
    if failures:
        sys.exit("Runs failed (finished runs are kept and reused on the next call):\n\n" + "\n\n".join(failures))

    teacher = teacher_eval_job.result()
    # "student" first: every row is compared with it.
    rows = summarize(teacher, {name: [job.result() for job in jobs_by_name[name]] for name in seeds})
    from detectron2.data import DatasetCatalog

    setting = {
        "benchmark": args.benchmark, "dataset": dataset, "images": len(DatasetCatalog.get(dataset)), "schedule": tag,
        "seeds": seeds, "device": args.device, "jobs": jobs, "extra_opts": args.opts,
        "command": command_line(COMMAND, sys.argv[1:] if argv is None else argv), "commit": runner.commit,
        "student_settings": student_settings(bench.student, student_iters, args.opts),
    }  # fmt: skip
    stem = Path(args.results_dir) / (bench.stem if tag == "full" else f"{bench.stem}_{tag}")
    sizes = model_sizes(bench.student, args.device, args.opts)
    if args.add_to:
        addition = {"command": setting["command"], "commit": setting["commit"], "seeds": seeds}
        stem = args.add_to.with_suffix("")
        teacher, rows, setting = add_rows(json.loads(args.add_to.read_text()), rows, addition)
    markdown = write_table(stem, teacher, rows, sizes, setting)
    print(f"\n{markdown}\nWritten {stem}.md, .json and .png in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
