#!/usr/bin/env python
"""Search a recipe's loss weights and options on a validation set (optuna: TPE sampler, median pruner).

    python tools/tune_recipe.py --recipe configs/shapes/mobilenet_v2/nst.yaml \\
        --space configs/shapes/mobilenet_v2/search/nst.yaml --budget 20 --study-dir output/tune/nst \\
        --dataset kddet_shapes_val --eval-period 100 [KEY VALUE ...]

Each trial trains the recipe once per --seeds with one setting of the space's keys and is scored by
its box AP on --dataset; a trial whose AP at an intermediate evaluation (every --eval-period
iterations) falls below the median of earlier trials is stopped. Run the same command again to
resume an interrupted search or to raise its budget. Writes the chosen recipe
(<study-dir>/<recipe>_tuned.yaml, or --output) and <study-dir>/report.md with report.png.
"""

import argparse
import logging

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

from detectron2.utils.logger import setup_logger

from kddet.tuning import tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="the recipe (config file) to tune")
    parser.add_argument("--space", required=True, help="yaml of config keys: {low, high[, log, step]} or {choices}")
    parser.add_argument("--budget", type=int, required=True, help="trials to finish (completed or pruned), in all")
    parser.add_argument("--study-dir", required=True, help="folder of the study: its journal, runs and report")
    parser.add_argument(
        "--dataset", help="validation set the trials are scored on (default: the recipe's, if not a test set)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1], help="each trial's AP is the mean over these seeds"
    )
    parser.add_argument(
        "--eval-period", type=int, default=0, help="evaluate every N iterations, for pruning (0: at the end)"
    )
    parser.add_argument(
        "--prune-from",
        type=int,
        help="the first iteration whose evaluation may stop a trial (default: the first learning-rate drop, "
        "or half the schedule without one)",
    )
    parser.add_argument("--startup-trials", type=int, default=5, help="random trials before TPE and pruning start")
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--output", help="where the chosen recipe is written")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied to every trial")
    args = parser.parse_args()
    if args.budget < 1:
        parser.error(f"--budget must be 1 or more, not {args.budget}")
    setup_logger(args.study_dir, name="kddet")
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    result = tune(
        args.recipe,
        args.space,
        args.budget,
        args.study_dir,
        dataset=args.dataset,
        seeds=args.seeds,
        eval_period=args.eval_period,
        opts=args.opts,
        sampler_seed=args.sampler_seed,
        startup_trials=args.startup_trials,
        output=args.output,
        prune_from=args.prune_from,
    )
    print(f"best of {result.num_trials} trials: AP {result.best_value:.1f} with {result.best_params}")
    print(f"recipe: {result.recipe_file}\nreport: {result.report_file}")


if __name__ == "__main__":
    main()
