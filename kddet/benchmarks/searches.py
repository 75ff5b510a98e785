"""The searches that choose the settings of the pretrained students' recipes, as data: each tunes one
recipe's keys on kddet_shapes_val with tools/tune_recipe.py (kddet.tuning), never on the test images
the results tables report. A search's space and its outcome (report, chart, chosen setting) are kept
together under results/tuning/<name>/."""

from dataclasses import dataclass
from pathlib import Path

from .schedule import CONFIGS, REPO

TUNING_DIR = REPO / "results/tuning"
VAL = "kddet_shapes_val"


@dataclass(frozen=True)
class Search:
    name: str
    recipe: str  # named as under configs/shapes/
    budget: int  # trials to finish, completed or pruned
    startup_trials: int = 3  # random trials before TPE proposes and the pruner may stop a trial
    seeds: tuple = (1,)  # each trial's AP is their mean
    eval_period: int = 100  # intermediate evaluations the pruner reads

    @property
    def config(self) -> Path:
        return CONFIGS / f"{self.recipe}.yaml"

    @property
    def space(self) -> Path:
        return TUNING_DIR / self.name / "space.yaml"


SEARCHES = {
    s.name: s
    for s in [
        Search("review_kd", "mobilenet_v2/review_kd", budget=4),
        Search("dkd", "mobilenet_v2/dkd", budget=4),
        Search("fgd", "mobilenet_v2/fgd", budget=4),
        Search("mgd", "mobilenet_v2/mgd", budget=4),
        Search("fbkd", "mobilenet_v2/fbkd", budget=4),
        Search("fitnet", "mobilenet_v2/fitnet", budget=4),
        Search("fgfi", "mobilenet_v2/fgfi", budget=4),
        Search("nst", "mobilenet_v2/nst", budget=4),
        Search("chen2017", "mobilenet_v2/chen2017", budget=4),
        Search("pkd", "mobilenet_v2/pkd", budget=4),
        Search("combined", "mobilenet_v2/combined", budget=6),
        Search("fgd_inheriting", "mobilenet_v2_wide/fgd_inheriting", budget=4),
        # Lower weights than the first searches of FGD and FBKD, whose every trial hurt.
        Search("fgd_low", "mobilenet_v2/fgd", budget=4),
        Search("fbkd_low", "mobilenet_v2/fbkd", budget=4),
        Search("fgfi_two_seeds", "mobilenet_v2/fgfi", budget=4, seeds=(1, 2)),
    ]
}
