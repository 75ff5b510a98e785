"""Search a recipe's loss weights and options on a validation set with optuna.

A *search space* is a yaml file of config keys, each with a range or a list of choices::

    KD.NST.WEIGHT: {low: 10, high: 400, log: true}     # a float, sampled on a log scale
    KD.BALANCE.ITERS: {low: 10, high: 40, step: 10}     # an int (low, high and step are ints)
    KD.NST.IN_FEATURES: {choices: [[p2, p3, p4, p5, p6], [p3, p4, p5, p6]]}

Each trial trains the recipe with one sampled setting and is scored by its box AP on the
validation set. Optuna's TPE sampler proposes the settings and its median pruner stops a trial
whose AP at an intermediate evaluation (``TEST.EVAL_PERIOD``) is below the median of earlier
trials at the same step. Evaluations before the learning rate first drops (half the schedule if
it never drops) are recorded but stop no trial: a distillation loss at a high weight can speed a
student's start without improving its end, so AP measured before the decay would stop the low
weights for the wrong reason. The study is kept in a journal file,
so a search that was interrupted resumes where it stopped. The chosen setting is written as a
recipe (a yaml whose ``_BASE_`` is the searched recipe) together with a report of every trial
(markdown table and chart).
"""

import gc
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import optuna
import yaml
from optuna.trial import TrialState

from detectron2.config import CfgNode
from detectron2.engine import HookBase

from .config import load_config

__all__ = ["Dimension", "PruningHook", "TuningResult", "load_search_space", "tune"]

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Dimension:
    """One config key of a search space: a number in [low, high] (on a log scale with ``log``,
    in steps of ``step``), or one of ``choices``."""

    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[tuple] = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            # optuna stores categorical choices as primitives: a list-valued choice goes as its yaml text.
            encoded = [yaml.safe_dump(c, default_flow_style=True).strip() for c in self.choices]
            return yaml.safe_load(trial.suggest_categorical(self.key, encoded))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def load_search_space(path: str, recipe: CfgNode) -> List[Dimension]:
    """The dimensions of the search space file ``path``, each key checked against ``recipe``."""
    with open(path) as f:
        space = yaml.safe_load(f) or {}
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{path}: a search space is a mapping of config keys to ranges or choices, and it has none.")
    dimensions = []
    for key, spec in space.items():
        where = f"{path}: {key}"
        _check_key(recipe, key, where)
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: give {{low: A, high: B}} (with log: true or step: S) or {{choices: [...]}}.")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; use low, high, log, step or choices.")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ValueError(f"{where}: choices is a non-empty list, and alone.")
            dimensions.append(Dimension(key, choices=tuple(spec["choices"])))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ValueError(f"{where}: low and high are numbers with low < high (got {low!r}, {high!r}).")
        if spec.get("log") and low <= 0:
            raise ValueError(f"{where}: a log scale needs low > 0 (got {low}).")
        dimensions.append(Dimension(key, low, high, bool(spec.get("log", False)), spec.get("step")))
    return dimensions


def _check_key(cfg: CfgNode, key: str, where: str) -> None:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            raise ValueError(
                f"{where}: the recipe has no config key {key}. Search keys it has (e.g. KD.<LOSS>.WEIGHT of a "
                "loss in its KD.LOSSES); `python tools/train_net.py --config-file RECIPE --check` lists its losses."
            )
        node = node[part]


class PruningHook(HookBase):
    """Reports each evaluation's box AP to an optuna trial and stops the run when the pruner says
    so. It must come after detectron2's EvalHook, whose results it reads from the event storage."""

    def __init__(self, trial: optuna.Trial, step_offset: int = 0, prune_from: int = 0):
        self.trial = trial
        self.step_offset = step_offset
        self.prune_from = prune_from  # the first iteration whose evaluation may stop the trial
        self.last_ap: Optional[float] = None
        self._seen_iter = -1

    def _read_evaluation(self) -> bool:
        latest = self.trainer.storage.latest().get("bbox/AP")
        if latest is None or latest[1] == self._seen_iter:
            return False
        self.last_ap, self._seen_iter = float(latest[0]), latest[1]
        return True

    def after_step(self):
        if self._read_evaluation():
            self.trial.report(self.last_ap, self.step_offset + self._seen_iter)
            if self._seen_iter + 1 >= self.prune_from and self.trial.should_prune():
                raise optuna.TrialPruned(f"AP {self.last_ap:.1f} at iteration {self._seen_iter + 1}")

    def after_train(self):
        self._read_evaluation()  # the final evaluation, which detectron2 runs after the last step


@dataclass
class TuningResult:
    best_params: Dict[str, Any]
    best_value: float
    recipe_file: Path
    report_file: Path
    num_trials: int


def first_decay(solver: CfgNode) -> int:
    """The first iteration at which ``solver``'s learning rate drops, or half its schedule if it never does."""
    steps = [step for step in solver.STEPS if step < solver.MAX_ITER]
    return min(steps) if steps else solver.MAX_ITER // 2


def _train_trial(cfg: CfgNode, trial: optuna.Trial, step_offset: int, prune_from: int) -> float:
    """Train ``cfg`` in this process with a PruningHook; the box AP of its last evaluation."""
    from .engine import Trainer  # detectron2's trainer modules are heavy: imported when a search runs

    trainer = Trainer(cfg)
    hook = PruningHook(trial, step_offset, prune_from)
    trainer.register_hooks([hook])
    trainer.resume_or_load(resume=False)
    try:
        trainer.train()
    finally:
        del trainer
        gc.collect()
    if hook.last_ap is None or math.isnan(hook.last_ap):
        raise RuntimeError(f"trial {trial.number} ended without a box AP on {cfg.DATASETS.TEST[0]}")
    return hook.last_ap


def _resume(study: optuna.Study) -> None:
    """Trials left running by an interrupted search are marked failed and queued to run again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        logger.info("trial %d was interrupted: it runs again with the same setting", trial.number)


def tune(
    recipe: str,
    space_file: str,
    budget: int,
    study_dir: str,
    dataset: Optional[str] = None,
    seeds: Sequence[int] = (1,),
    eval_period: int = 0,
    opts: Sequence[str] = (),
    sampler_seed: int = 0,
    startup_trials: int = 5,
    output: Optional[str] = None,
    prune_from: Optional[int] = None,
) -> TuningResult:
    """Search ``space_file``'s keys of ``recipe`` for the highest mean box AP over ``seeds`` on
    ``dataset`` until ``budget`` trials have finished (completed or pruned), resuming the study in
    ``study_dir`` if it exists; write the chosen recipe (``output``, default
    ``study_dir/<recipe>_tuned.yaml``) and the report ``study_dir/report.md`` with its chart. Only
    evaluations from iteration ``prune_from`` on (default: first_decay) may stop a trial."""
    base = load_config(recipe, opts)
    dataset = _validation_set(dataset or (base.DATASETS.TEST[0] if base.DATASETS.TEST else ""))
    dimensions = load_search_space(space_file, base)
    prune_from = first_decay(base.SOLVER) if prune_from is None else prune_from
    study_path = Path(study_dir)
    study_path.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_path / "study.log")))
    study = optuna.create_study(
        study_name="kddet",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials),
    )
    settings = {
        "recipe": recipe,
        "space": str(space_file),
        "dataset": dataset,
        "seeds": list(seeds),
        "opts": list(opts),
        "prune_from": prune_from,
    }
    previous = study.user_attrs.get("settings")
    if previous is not None and previous != settings:
        raise ValueError(
            f"{study_path} holds a search with other settings ({previous}); "
            "give another study folder to start a new one."
        )
    study.set_user_attr("settings", settings)
    _resume(study)
    max_iter = base.SOLVER.MAX_ITER

    def objective(trial: optuna.Trial) -> float:
        values = {d.key: d.suggest(trial) for d in dimensions}
        trial_opts = [item for key, value in values.items() for item in (key, repr_opt(value))]
        scores = []
        for index, seed in enumerate(seeds):
            cfg = load_config(
                recipe,
                [
                    *opts,
                    *trial_opts,
                    "SEED",
                    str(seed),
                    "DATASETS.TEST",
                    repr_opt([dataset]),
                    "TEST.EVAL_PERIOD",
                    str(eval_period),
                    "OUTPUT_DIR",
                    str(study_path / f"trial_{trial.number}" / f"seed_{seed}"),
                ],
            )
            cfg.freeze()
            scores.append(_train_trial(cfg, trial, index * max_iter, prune_from))
        trial.set_user_attr("seed_ap", scores)
        return statistics.fmean(scores)

    remaining = budget - sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(FloatingPointError,))
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"No trial of {study_path} completed: see the logs under {study_path}/trial_*.")
    best = max(completed, key=lambda t: t.value)
    best_params = {d.key: yaml.safe_load(best.params[d.key]) if d.choices else best.params[d.key] for d in dimensions}
    recipe_file = Path(output) if output else study_path / f"{Path(recipe).stem}_tuned.yaml"
    write_recipe(recipe_file, recipe, best_params, best, settings)
    report_file = write_report(study, dimensions, study_path, settings)
    return TuningResult(best_params, best.value, recipe_file, report_file, len(study.trials))


def _validation_set(name: str) -> str:
    """``name``, unless it is empty or names a test split."""
    if not name or "test" in name.split("_")[-1]:
        raise ValueError(
            f"The trials would be scored on {name or 'no data set'}; a search must score them on a validation set, "
            "never on the images the result is reported on. Pass --dataset NAME (e.g. kddet_shapes_val)."
        )
    return name


def repr_opt(value: Any) -> str:
    """``value`` as detectron2's merge_from_list reads it back."""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, list) else repr(value)


def _nested(params: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_recipe(path: Path, recipe: str, params: Dict[str, Any], best: optuna.trial.FrozenTrial, settings) -> None:
    """The chosen setting as a recipe over ``recipe``; the header says how it was chosen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(recipe, path.parent)
    seeds = ", ".join(f"{ap:.1f}" for ap in best.user_attrs.get("seed_ap", []))
    header = (
        f"# Chosen by tools/tune_recipe.py over {settings['space']}: trial {best.number}, box AP {best.value:.1f} "
        f"(seeds {settings['seeds']}: {seeds})\n# on {settings['dataset']}. Report the recipe on a held-out test set.\n"
    )
    if settings["opts"]:
        header += f"# Every trial also set: {' '.join(map(str, settings['opts']))}\n"
    body = yaml.safe_dump({"_BASE_": base, **_nested(params)}, sort_keys=False, default_flow_style=None)
    path.write_text(header + body)


def write_report(study: optuna.Study, dimensions: List[Dimension], study_dir: Path, settings) -> Path:
    """``report.md`` (every trial: state, setting, AP per seed and mean) and ``report.png`` (AP per trial)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (*FINISHED, TrialState.FAIL)]
    keys = [d.key for d in dimensions]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(completed, key=lambda t: t.value) if completed else None
    lines = [
        "# Search report",
        "",
        f"Recipe `{settings['recipe']}`, space `{settings['space']}`, box AP on `{settings['dataset']}` "
        f"(mean over seeds {settings['seeds']}); {len(completed)} completed, "
        f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned, {sum(t.state == TrialState.FAIL for t in trials)}"
        " failed. Written by `tools/tune_recipe.py`.",
        "",
        "| trial | state | " + " | ".join(keys) + " | AP per seed | AP |",
        "|---:|---|" + "---|" * len(keys) + "---|---:|",
    ]
    for t in trials:
        params = " | ".join(str(t.params.get(k, "")) for k in keys)
        per_seed = ", ".join(f"{ap:.1f}" for ap in t.user_attrs.get("seed_ap", []))
        if t.state == TrialState.COMPLETE:
            value = f"**{t.value:.1f}**" if t is best else f"{t.value:.1f}"
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            value = f"({t.intermediate_values[step]:.1f} at step {step + 1})"
        else:
            value = ""
        lines.append(f"| {t.number} | {t.state.name.lower()} | {params} | {per_seed} | {value} |")
    report = study_dir / "report.md"
    report.write_text("\n".join(lines) + "\n\n![AP per trial](report.png)\n")
    _plot(trials, study_dir / "report.png")
    return report


def _plot(trials, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for state, marker, label in ((TrialState.COMPLETE, "o", "completed"), (TrialState.PRUNED, "x", "pruned")):
        points = [
            (t.number, t.value if state == TrialState.COMPLETE else t.intermediate_values[max(t.intermediate_values)])
            for t in trials
            if t.state == state and (state == TrialState.COMPLETE or t.intermediate_values)
        ]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=label)
    ax.set_xlabel("trial")
    ax.set_ylabel("box AP (pruned: last evaluation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
