#!/usr/bin/env python
"""Ablations on the embedded data set: one recipe's options varied, each variant over seeds.

Each study below is a list of variants (a recipe of configs/shapes/ and the options that make the
variant); every variant is trained with each seed through tools/train_net.py, exactly as
tools/make_results.py trains its recipes (same schedule, same teacher, same cache: a run already
made by make_results with the same resolved config is reused), and the study's table goes to
results/ablation_<study>.md: AP mean ± std, the change against the study's baseline (the student
alone, the MobileNetV2 student alone for the *pretrained studies, or the recipe BASELINES names)
with the same seeds, and the verdict of the same Welch t-test.

    python tools/ablate.py fitnet                 # -> results/ablation_fitnet.md
    python tools/ablate.py fgfi balance --seeds 1 2 3
    python tools/ablate.py pretrained             # MobileNetV2 from ImageNet weights, converted if missing
"""
import argparse
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_results as mr  # noqa: E402

BALANCE = ["KD.BALANCE.ENABLED", True]
HEAD_LOSSES = ["RPNSoftCls", "RCNSoftCls", "RPNBoundedReg", "RCNBoundedReg"]  # Chen et al. 2017 without the hint
COMBINED = ["NST", "SP", *HEAD_LOSSES]  # configs/shapes/mobilenet_v2/combined.yaml
COMBINED_AB = ["KD.LOSSES", [*COMBINED, "AB"], "KD.AB.WEIGHT", 1.0]
COMBINED_TUNED = [*COMBINED, "AB", "OFD"]  # configs/shapes/mobilenet_v2/combined_tuned.yaml
CLIP = ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0]
FGFI_STANDARDISED = ["KD.FGFI.STANDARDIZE_TARGET", True, "KD.FGFI.STANDARDIZE_STUDENT", True]
FAST_TEACHER = ["KD.TEACHER.PRECISION", "bf16", "KD.TEACHER.CHANNELS_LAST", True]
# study -> [(variant, recipe, options)]; the first variant of a study is its recipe as committed.
STUDIES: Dict[str, List[Tuple[str, str, list]]] = {
    # Whether a longer schedule narrows the student's seed-to-seed spread.
    "variance": [
        ("600 iterations (2x)", "student", ["SOLVER.MAX_ITER", 600, "SOLVER.STEPS", (450, 550)]),
    ],
    # FitNets and FGFI hurt in results/embedded_scratch.md: which of their choices does it?
    "fitnet": [
        ("recipe (weight 1, 1x1 adapter, raw target, p2-p6)", "fitnet", []),
        ("weight 0.1", "fitnet", ["KD.FITNET.WEIGHT", 0.1]),
        ("weight 0.01", "fitnet", ["KD.FITNET.WEIGHT", 0.01]),
        ("3x3 adapter", "fitnet", ["KD.FITNET.ADAPTER", "conv3x3"]),
        ("coarse levels only (p4-p6)", "fitnet", ["KD.FITNET.IN_FEATURES", ["p4", "p5", "p6"]]),
        ("standardised target", "fitnet", ["KD.FITNET.STANDARDIZE_TARGET", True]),
        ("balanced (0.5 of the detector's losses)", "fitnet", BALANCE),
        ("standardised target, balanced", "fitnet", ["KD.FITNET.STANDARDIZE_TARGET", True, *BALANCE]),
    ],
    "fgfi": [
        ("recipe (lambda 0.01, 3x3 adapter, psi 0.5, warm-up 50)", "fgfi", []),
        ("lambda 0.001", "fgfi", ["KD.FGFI.WEIGHT", 0.001]),
        ("lambda 0.0001", "fgfi", ["KD.FGFI.WEIGHT", 0.0001]),
        ("1x1 adapter", "fgfi", ["KD.FGFI.ADAPTER", "conv1x1"]),
        ("psi 0.8 (tighter masks)", "fgfi", ["KD.FGFI.PSI", 0.8]),
        ("warm-up 150 (half the schedule)", "fgfi", ["KD.FGFI.WARMUP_ITERS", 150]),
        ("full map instead of the masks, same lambda and normalisation", "fgfi", ["KD.FGFI.FULL_MAP", True]),
        ("standardised target", "fgfi", ["KD.FGFI.STANDARDIZE_TARGET", True]),
        ("balanced (0.5 of the detector's losses)", "fgfi", BALANCE),
        ("standardised target, balanced", "fgfi", ["KD.FGFI.STANDARDIZE_TARGET", True, *BALANCE]),
        # The distillation path with nothing distilled: teacher built and run, adapters trained on no signal.
        ("lambda 0 (nothing distilled)", "fgfi", ["KD.FGFI.WEIGHT", 0.0]),
    ],
    "balance": [
        ("KD, hand-tuned weight 0.25", "kd", []),
        ("KD, the weight 1.0 that diverged, balanced", "kd", ["KD.KD.WEIGHT", 1.0, *BALANCE]),
        ("SP, hand-tuned weight 300", "sp", []),
        ("SP, the paper's weight 3000 (diverged), balanced", "sp", ["KD.SP.WEIGHT", 3000.0, *BALANCE]),
    ],
    # The hint losses of results/embedded.md (MobileNetV2-FPN from ImageNet weights) at lower weights,
    # and Chen et al.'s recipe without its hint.
    "pretrained": [
        ("FitNets, weight 0.1", "mobilenet_v2/fitnet", ["KD.FITNET.WEIGHT", 0.1]),
        ("FitNets, weight 0.01", "mobilenet_v2/fitnet", ["KD.FITNET.WEIGHT", 0.01]),
        ("FGFI, lambda 0.001", "mobilenet_v2/fgfi", ["KD.FGFI.WEIGHT", 0.001]),
        ("FGFI, lambda 0.0001", "mobilenet_v2/fgfi", ["KD.FGFI.WEIGHT", 0.0001]),
        ("Chen 2017 without the hint (head losses only)", "mobilenet_v2/chen2017",
         ["KD.LOSSES", HEAD_LOSSES]),
    ],
    # FGFI diverged on the pretrained student the step its term switched on, through adapters still
    # at their random start: fitted during warm-up (KD.FGFI.FIT_ADAPTERS_IN_WARMUP), do they keep it?
    "fgfi_pretrained": [
        ("FGFI, adapters fitted during warm-up", "mobilenet_v2/fgfi", ["KD.FGFI.FIT_ADAPTERS_IN_WARMUP", True]),
        ("FGFI, lambda 0.001, adapters fitted during warm-up", "mobilenet_v2/fgfi",
         ["KD.FGFI.WEIGHT", 0.001, "KD.FGFI.FIT_ADAPTERS_IN_WARMUP", True]),
        # The distillation path with nothing distilled: teacher built and run, adapters trained on no signal.
        ("FGFI, lambda 0 (nothing distilled)", "mobilenet_v2/fgfi", ["KD.FGFI.WEIGHT", 0.0]),
    ],
    # Whether the combined recipe of results/embedded.md gains from one more loss (AB, which helps
    # the scratch student), or from its feature terms weighing more.
    "combined_pretrained": [
        ("combined + AB", "mobilenet_v2/combined", COMBINED_AB),
        ("combined, NST and SP at twice their weights", "mobilenet_v2/combined", ["KD.NST.WEIGHT", 100.0, "KD.SP.WEIGHT", 600.0]),
    ],
    # Combined + AB (the best of combined_pretrained): which part carries it, and whether its head
    # losses gain from a softer target, a harder pull or one more feature term.
    "heads_pretrained": [
        ("head losses + AB (no NST, no SP)", "mobilenet_v2/combined",
         ["KD.LOSSES", [*HEAD_LOSSES, "AB"], "KD.AB.WEIGHT", 1.0]),
        ("combined + AB, soft classification at temperature 2", "mobilenet_v2/combined",
         [*COMBINED_AB, "KD.RPNSOFTCLS.TEMPERATURE", 2.0, "KD.RCNSOFTCLS.TEMPERATURE", 2.0]),
        ("combined + AB, soft classification mu 0.25 (more teacher)", "mobilenet_v2/combined",
         [*COMBINED_AB, "KD.RPNSOFTCLS.MU", 0.25, "KD.RCNSOFTCLS.MU", 0.25]),
        ("combined + AB, bounded regression at weight 1", "mobilenet_v2/combined",
         [*COMBINED_AB, "KD.RPNBOUNDEDREG.WEIGHT", 1.0, "KD.RCNBOUNDEDREG.WEIGHT", 1.0]),
        ("combined + AB + OFD", "mobilenet_v2/combined",
         ["KD.LOSSES", [*COMBINED, "AB", "OFD"], "KD.AB.WEIGHT", 1.0, "KD.OFD.WEIGHT", 1.0]),
    ],
    # NST and Chen et al. 2017 are within noise in results/embedded.md: does NST gain from weighing
    # more, and does Chen's recipe help once its hint weighs what FitNets alone can afford?
    # The weights of configs/shapes/mobilenet_v2/nst.yaml (100) and chen2017.yaml (hint 0.02) come from here.
    "card_pretrained": [
        ("NST, weight 50 (the scratch recipe's)", "mobilenet_v2/nst", ["KD.NST.WEIGHT", 50.0]),
        ("NST, weight 100", "mobilenet_v2/nst", ["KD.NST.WEIGHT", 100.0]),
        ("NST, weight 200", "mobilenet_v2/nst", ["KD.NST.WEIGHT", 200.0]),
        ("Chen 2017, hint at weight 0.5 (the scratch recipe's)", "mobilenet_v2/chen2017", ["KD.FITNET.WEIGHT", 0.5]),
        ("Chen 2017, hint at weight 0.1", "mobilenet_v2/chen2017", ["KD.FITNET.WEIGHT", 0.1]),
        ("Chen 2017, hint at weight 0.02", "mobilenet_v2/chen2017", ["KD.FITNET.WEIGHT", 0.02]),
    ],
    # FGFI, the virtual teacher and head losses + AB diverged on some seeds of the pretrained student
    # as its learning rate reached 0.02 after warm-up: does clipping each gradient's norm (detectron2's
    # SOLVER.CLIP_GRADIENTS) keep them, and what does it cost the student alone? Its table was made
    # while the student did not clip; the student clips since (mobilenet_v2/student.yaml).
    "clip_pretrained": [
        ("student alone, gradients clipped", "mobilenet_v2/student", CLIP),
        ("FGFI, gradients clipped", "mobilenet_v2/fgfi", CLIP),
        ("virtual teacher, gradients clipped", "mobilenet_v2/virtual_teacher", CLIP),
        ("combined + AB, gradients clipped", "mobilenet_v2/combined", [*COMBINED_AB, *CLIP]),
        ("combined_tuned, gradients clipped", "mobilenet_v2/combined_tuned", CLIP),
        ("NST, gradients clipped", "mobilenet_v2/nst", CLIP),
        ("Chen 2017, gradients clipped", "mobilenet_v2/chen2017", CLIP),
    ],
    # With clipping in the student: the teacher-free bar, the tuned recipe, and whether one more
    # feature term or a stronger NST takes it past 80% of the gap.
    "gap_pretrained": [
        ("virtual teacher (no teacher)", "mobilenet_v2/virtual_teacher", []),
        ("combined_tuned", "mobilenet_v2/combined_tuned", []),
        ("combined_tuned + PKD", "mobilenet_v2/combined_tuned", ["KD.LOSSES", [*COMBINED_TUNED, "PKD"], "KD.PKD.WEIGHT", 1.0]),
        ("combined_tuned, NST at weight 100", "mobilenet_v2/combined_tuned", ["KD.NST.WEIGHT", 100.0]),
        ("combined_tuned, soft classification mu 0.25 (more teacher)", "mobilenet_v2/combined_tuned",
         ["KD.RPNSOFTCLS.MU", 0.25, "KD.RCNSOFTCLS.MU", 0.25]),
    ],
    # The standardised imitations help alone (hints_clip_pretrained): do they add to combined_tuned?
    "standardised_in_combined_pretrained": [
        ("combined_tuned + FGFI, both maps standardised, lambda 0.05", "mobilenet_v2/combined_tuned",
         ["KD.LOSSES", [*COMBINED_TUNED, "FGFI"], *FGFI_STANDARDISED, "KD.FGFI.WEIGHT", 0.05, "KD.FGFI.WARMUP_ITERS", 50]),
        ("combined_tuned + PKD at weight 5", "mobilenet_v2/combined_tuned", ["KD.LOSSES", [*COMBINED_TUNED, "PKD"], "KD.PKD.WEIGHT", 5.0]),
    ],
    # Clipped, NST at weight 100 scored within noise of the clipped student (clip_pretrained):
    # does it need to weigh more once clipping bounds its steps?
    "nst_clip_pretrained": [
        ("NST, weight 100 (the recipe)", "mobilenet_v2/nst", []),
        ("NST, weight 200", "mobilenet_v2/nst", ["KD.NST.WEIGHT", 200.0]),
        ("NST, weight 400", "mobilenet_v2/nst", ["KD.NST.WEIGHT", 400.0]),
    ],
    # Clipped, FitNets and FGFI hurt (results/embedded.md), most on the thin bars: is it the finest
    # level, where a bar is a few cells wide, or the hint at any level and weight?
    "hints_clip_pretrained": [
        ("FitNets, weight 0.01", "mobilenet_v2/fitnet", ["KD.FITNET.WEIGHT", 0.01]),
        ("FitNets on p2 only", "mobilenet_v2/fitnet", ["KD.FITNET.IN_FEATURES", ["p2"]]),
        ("FitNets without p2 (p3-p6)", "mobilenet_v2/fitnet", ["KD.FITNET.IN_FEATURES", ["p3", "p4", "p5", "p6"]]),
        ("FitNets on p4-p6", "mobilenet_v2/fitnet", ["KD.FITNET.IN_FEATURES", ["p4", "p5", "p6"]]),
        ("FGFI without p2 (p3-p6)", "mobilenet_v2/fgfi", ["KD.FGFI.IN_FEATURES", ["p3", "p4", "p5", "p6"]]),
        # The same maps compared after standardising both sides' channels: the pattern without the scale.
        ("PKD instead (both maps standardised), weight 1", "mobilenet_v2/fitnet", ["KD.LOSSES", ["PKD"], "KD.PKD.WEIGHT", 1.0]),
        ("PKD instead, weight 5", "mobilenet_v2/fitnet", ["KD.LOSSES", ["PKD"], "KD.PKD.WEIGHT", 5.0]),
        ("FGFI, both maps standardised", "mobilenet_v2/fgfi", FGFI_STANDARDISED),
        ("FGFI, both maps standardised, lambda 0.05", "mobilenet_v2/fgfi", [*FGFI_STANDARDISED, "KD.FGFI.WEIGHT", 0.05]),
    ],
    # How much of the pretrained student's spread is evaluation noise: the same five trainings, read
    # on the 200 images of kddet_shapes_val instead of the 2000 of kddet_shapes_test. Compare the
    # spreads; the change of AP is one of evaluation set.
    "variance_pretrained": [
        ("evaluated on kddet_shapes_val (200 images)", "mobilenet_v2/student", ["DATASETS.TEST", ("kddet_shapes_val",)]),
    ],
    # The pretrained student's spread is mostly its thin bars' localisation (bar AP ±5.0, AP75 15-37):
    # what narrows it, over ten seeds as the student alone's.
    "variance_sources_pretrained": [
        ("one data stream for every seed (DATALOADER.SEED 1)", "mobilenet_v2/student", ["DATALOADER.SEED", 1]),
        # Anchors as elongated as the bars (up to 1:7.5); the teacher keeps 1:2 to 2:1, so this student cannot
        # take the RPN's per-anchor losses from it.
        ("anchors 1:4 to 4:1", "mobilenet_v2/student", ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.25, 0.5, 1.0, 2.0, 4.0]]]),
    ],
    # The fast teacher (KD.TEACHER.PRECISION / CHANNELS_LAST) against the same recipe's fp32 teacher.
    "fast_teacher": [("combined, teacher in bf16 and channels_last", "combined", FAST_TEACHER)],
    "fast_teacher_nst": [("NST, teacher in bf16 and channels_last", "nst", FAST_TEACHER)],
}
# study -> the recipe its variants are compared against, where it is not the slim student alone:
# the studies named *pretrained compare with the MobileNetV2 student alone.
BASELINES: Dict[str, str] = {"fast_teacher": "combined", "fast_teacher_nst": "nst"}


def baseline_of(study: str) -> str:
    return "mobilenet_v2/student" if study.endswith("pretrained") else BASELINES.get(study, "student")


def config_of(recipe: str) -> Path:
    """The config of ``recipe``: the slim student alone for "student", else configs/shapes/<recipe>.yaml."""
    return mr.STUDENT_CONFIG if recipe == "student" else mr.CONFIGS / f"{recipe}.yaml"


def format_markdown(study: str, teacher: dict, rows: List[dict], variants: list, setting: dict) -> str:
    student, recipes = rows[0], rows[1:]
    baseline = mr.STUDENT_CONFIG.stem if baseline_of(study) == "student" else baseline_of(study)
    distilled = bool(mr.load_config(config_of(baseline_of(study))).KD.LOSSES)
    first = "recipe as committed" if distilled else "student alone"
    lines = [
        f"# Ablation `{study}` on the embedded data set",
        "",
        f"Generated by `{' '.join(['python tools/ablate.py', *setting['argv']])}` at commit `{setting['commit']}`; "
        "do not edit by hand.",
        "",
        f"COCO box AP on `{setting['dataset']}`; the first row and every variant trained {student['iters']} iterations, "
        f"the first *seeds* of seeds 1, 2, 3, ... (mean ± std)"
        + ("" if math.isnan(teacher["AP"]) else f"; teacher {teacher['AP']:.1f} AP") + ". "
        "Verdict: the Welch t-test at 95% of `tools/make_results.py`.",
        "",
        "| variant | recipe | options | seeds | AP | AP50 | ΔAP vs the first row | smallest detectable ΔAP | gap recovered | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        f"| {first} | `{baseline}` | | {mr.seeds_cell(student)} | {mr._pm(student['AP'], student['AP_std'])} | "
        f"{mr._pm(student['AP50'], student['AP50_std'])} | | | | |",
    ]
    for row, (name, recipe, opts) in zip(recipes, variants):
        options = " ".join(map(str, opts)) or "(as committed)"
        lines.append(
            f"| {name} | `{recipe}` | `{options}` | {mr.seeds_cell(row)} | {mr._pm(row['AP'], row['AP_std'])} | "
            f"{mr._pm(row['AP50'], row['AP50_std'])} | {row['delta']:+.1f} | {mr._pm_abs(row['detectable'])} | "
            f"{mr._percent(row['gap_recovered'])} | {mr.verdict(row)} |"
        )
    named = [dict(student, name=first), *(dict(row, name=name) for row, (name, _, _) in zip(recipes, variants))]
    return "\n".join([*lines, "", *mr.format_per_class(teacher, named)]).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", choices=STUDIES)
    parser.add_argument("--seeds", nargs="+", type=int, help=f"seeds of every run (default: {mr.SEEDS} for a variant; "
                        "the student alone and a recipe as committed take their seeds in make_results' table, already trained there)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, help="trainings at a time (default: 2 on cpu, 1 on cuda)")
    parser.add_argument("--output", default=str(mr.REPO / "output/results"), help="folder of make_results' runs")
    parser.add_argument("--results-dir", default=str(mr.REPO / "results"))
    args = parser.parse_args()
    os.environ.setdefault("DETECTRON2_DATASETS", str(mr.REPO / "datasets"))
    mr.generate_splits()
    jobs = args.jobs or (2 if args.device == "cpu" else 1)
    output = Path(args.output).resolve()
    runner = mr.Runner(args.device, jobs, [], retrain=False, cache_root=output)
    iters = mr.load_config(mr.STUDENT_CONFIG).SOLVER.MAX_ITER
    baselines = list(dict.fromkeys(baseline_of(study) for study in args.studies))
    mr.convert_missing_weights([config_of(recipe) for recipe in baselines + [recipe for study in args.studies for _, recipe, _ in STUDIES[study]]])
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        needs_teacher = any(
            mr.losses_need_teacher(mr.load_config(config_of(recipe)))
            for study in args.studies for _, recipe, _ in STUDIES[study]
        )
        teacher_job = pool.submit(mr.train_teacher, runner, output / "teacher") if needs_teacher else None

        def run(name: str, recipe: str, opts: list, out_dir: Path, seed: int) -> dict:
            config = config_of(recipe)
            opts = ["SEED", seed, *mr.schedule_opts(config, iters), *opts]
            teacher_key = ""
            if mr.losses_need_teacher(mr.load_config(config)):
                teacher_key = teacher_job.result()["key"]
                opts += ["KD.TEACHER.WEIGHTS", output / "teacher" / "model_final.pth"]
            return runner.run(f"{name} seed {seed}", config, out_dir / f"seed{seed}", opts, teacher_key)

        def seeds(recipe: str, opts: list) -> List[int]:
            return mr.seeds_of(recipe, args.seeds) if not opts else (args.seeds or mr.SEEDS)

        def out_dir(study: str, i: int, recipe: str, opts: list) -> Path:
            if opts:
                return output / "ablation" / study / str(i)
            # A recipe of the results table as committed (the student alone too) is make_results' run
            # of it, shared with the table; another one is shared by the studies that train it.
            tables = {mr.run_folder(bench, name) for bench in mr.BENCHMARKS for name in ["student", *mr.all_recipes(bench)]}
            return output / ("full" if recipe in tables else "ablation") / recipe

        baseline_jobs = {
            baseline: [pool.submit(run, baseline, baseline, [], out_dir("", 0, baseline, []), s) for s in seeds(baseline, [])]
            for baseline in baselines
        }

        study_jobs = {
            study: [
                [pool.submit(run, f"{study}/{i}", recipe, opts, out_dir(study, i, recipe, opts), s) for s in seeds(recipe, opts)]
                for i, (_, recipe, opts) in enumerate(STUDIES[study])
            ]
            for study in args.studies
        }
        baseline_runs = {baseline: [job.result() for job in jobs_] for baseline, jobs_ in baseline_jobs.items()}
        # A study of the student alone neither waits for nor trains the teacher (make_results may be).
        for study, variant_jobs in study_jobs.items():
            # The teacher's AP on the baseline's test set, for the gap recovered.
            dataset = mr.load_config(config_of(baseline_of(study))).DATASETS.TEST[0]
            teacher = mr.evaluate_teacher(teacher_job.result(), output / "teacher", dataset, args.device) if teacher_job else {"AP": math.nan}
            runs = {"student": baseline_runs[baseline_of(study)]}  # summarize's name for the baseline
            runs.update({str(i): [job.result() for job in jobs_] for i, jobs_ in enumerate(variant_jobs)})
            rows = mr.summarize(teacher, runs)
            setting = {"argv": sys.argv[1:], "commit": runner.commit, "dataset": dataset}
            path = Path(args.results_dir) / f"ablation_{study}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(format_markdown(study, teacher, rows, STUDIES[study], setting))
            print(path.read_text())
    print(f"Done in {(time.perf_counter() - start) / 60:.1f} min.")


if __name__ == "__main__":
    main()
