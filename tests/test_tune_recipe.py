"""tools/tune_recipe.py (kddet/tuning.py): search spaces, pruning, a tiny search that resumes, and the
recipe and report it writes."""

import runpy
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import REPO, load_config
from detectron2.data import DatasetCatalog, MetadataCatalog
from kddet.data.shapes import SHAPE_CLASSES, load_shapes, shapes_root
from kddet.tuning import Dimension, PruningHook, first_decay, load_search_space, tune

RECIPE = REPO / "configs/shapes/nst.yaml"


def write_space(path: Path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def tiny_sets(datasets_root):
    """Four training and four validation images of kddet_shapes_val, registered in memory."""
    records = load_shapes(shapes_root(), "val")
    for name, subset in (("tune_tiny_train", records[:4]), ("tune_tiny_val", records[4:8])):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda subset=subset: subset)
            MetadataCatalog.get(name).set(thing_classes=SHAPE_CLASSES, evaluator_type="coco")
    return "tune_tiny_train", "tune_tiny_val"


def tiny_opts(teacher_weights) -> list:
    return [
        "DATASETS.TRAIN", '["tune_tiny_train"]',
        "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "[]", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "-1.0",
        "KD.TEACHER.WEIGHTS", str(teacher_weights),
    ]  # fmt: skip


def test_search_space_reads_ranges_and_choices(tmp_path):
    cfg = load_config(RECIPE)
    dims = load_search_space(
        write_space(
            tmp_path / "space.yaml",
            {
                "KD.NST.WEIGHT": {"low": 1.0, "high": 100.0, "log": True},
                "KD.BALANCE.ITERS": {"low": 10, "high": 40, "step": 10},
                "KD.NST.IN_FEATURES": {"choices": [["p2", "p3"], ["p4"]]},
            },
        ),
        cfg,
    )
    assert dims == [
        Dimension("KD.NST.WEIGHT", 1.0, 100.0, log=True),
        Dimension("KD.BALANCE.ITERS", 10, 40, step=10),
        Dimension("KD.NST.IN_FEATURES", choices=(["p2", "p3"], ["p4"])),
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    weight, iters, features = (d.suggest(trial) for d in dims)
    assert 1.0 <= weight <= 100.0 and isinstance(weight, float)
    assert iters in (10, 20, 30, 40)
    assert features in (["p2", "p3"], ["p4"])


@pytest.mark.parametrize(
    "space, message",
    [
        ({"KD.NOPE.WEIGHT": {"low": 1, "high": 2}}, "has no config key KD.NOPE.WEIGHT"),
        ({"KD.NST.WEIGHT": {"low": 2, "high": 1}}, "low < high"),
        ({"KD.NST.WEIGHT": {"low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
        ({"KD.NST.WEIGHT": {"low": 1, "high": 2, "scale": "log"}}, "unknown field"),
        ({"KD.NST.WEIGHT": {"choices": []}}, "non-empty list"),
        ({"KD.NST.WEIGHT": 3}, "give {low: A, high: B}"),
    ],
)
def test_bad_search_space_names_the_key_and_the_fix(tmp_path, space, message):
    with pytest.raises(ValueError, match=message):
        load_search_space(write_space(tmp_path / "space.yaml", space), load_config(RECIPE))


def test_a_test_set_is_refused_as_the_validation_set(tmp_path):
    recipe = REPO / "configs/shapes/mobilenet_v2/nst.yaml"  # evaluates on kddet_shapes_test
    space = write_space(tmp_path / "space.yaml", {"KD.NST.WEIGHT": {"low": 1.0, "high": 2.0}})
    with pytest.raises(ValueError, match="Pass --dataset"):
        tune(str(recipe), space, 1, str(tmp_path / "study"))
    with pytest.raises(ValueError, match="scored on kddet_shapes_test"):
        tune(str(recipe), space, 1, str(tmp_path / "study"), dataset="kddet_shapes_test")


class FakeTrial:
    def __init__(self, prune: bool):
        self.prune, self.reported = prune, []

    def report(self, value, step):
        self.reported.append((value, step))

    def should_prune(self):
        return self.prune


class FakeStorage:
    def __init__(self, latest):
        self._latest = latest

    def latest(self):
        return self._latest


class FakeTrainer:
    def __init__(self, latest):
        self.storage = FakeStorage(latest)


@pytest.mark.parametrize("prune", [False, True])
def test_pruning_hook_reports_each_evaluation_once_and_stops_when_told(prune):
    hook = PruningHook(FakeTrial(prune), step_offset=100)
    hook.trainer = FakeTrainer({"total_loss": (1.0, 9)})
    hook.after_step()  # no evaluation yet
    assert hook.trial.reported == []
    hook.trainer = FakeTrainer({"bbox/AP": (42.0, 9)})
    if prune:
        with pytest.raises(optuna.TrialPruned, match="AP 42.0 at iteration 10"):
            hook.after_step()
    else:
        hook.after_step()
        hook.after_step()  # the same evaluation is not reported twice
    assert hook.trial.reported == [(42.0, 109)]


def test_by_default_only_evaluations_after_the_first_learning_rate_drop_stop_a_trial():
    cfg = load_config(RECIPE)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 300, (225, 275)
    assert first_decay(cfg.SOLVER) == 225
    cfg.SOLVER.STEPS = (300,)  # a drop at the end or later is none
    assert first_decay(cfg.SOLVER) == 150


def test_an_evaluation_before_prune_from_is_reported_but_stops_nothing():
    hook = PruningHook(FakeTrial(True), step_offset=0, prune_from=20)
    hook.trainer = FakeTrainer({"bbox/AP": (30.0, 9)})
    hook.after_step()  # iteration 10: the pruner would stop it, but it is not asked yet
    hook.trainer = FakeTrainer({"bbox/AP": (31.0, 19)})
    with pytest.raises(optuna.TrialPruned, match="AP 31.0 at iteration 20"):
        hook.after_step()
    assert hook.trial.reported == [(30.0, 9), (31.0, 19)]


def test_a_tiny_search_writes_its_recipe_and_report_and_resumes(tmp_path, tiny_sets, teacher_weights):
    space = write_space(tmp_path / "space.yaml", {"KD.NST.WEIGHT": {"low": 1.0, "high": 100.0, "log": True}})
    study_dir = tmp_path / "study"
    opts = tiny_opts(teacher_weights)
    first = tune(str(RECIPE), space, 1, str(study_dir), dataset="tune_tiny_val", eval_period=1, opts=opts)
    assert first.num_trials == 1

    # An interrupted trial (left running) is failed and its setting retried; the budget counts finished trials.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_dir / "study.log")))
    study = optuna.load_study(study_name="kddet", storage=storage)
    interrupted = study.ask({"KD.NST.WEIGHT": optuna.distributions.FloatDistribution(1.0, 100.0, log=True)})
    result = tune(str(RECIPE), space, 2, str(study_dir), dataset="tune_tiny_val", eval_period=1, opts=opts)
    trials = optuna.load_study(study_name="kddet", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].params == study.trials[0].params  # the first trial was kept, not rerun
    assert trials[2].params["KD.NST.WEIGHT"] == interrupted.params["KD.NST.WEIGHT"]
    assert trials[2].intermediate_values  # the pruner saw the intermediate AP
    max_iter = load_config(RECIPE, *opts).SOLVER.MAX_ITER  # no decay: its evaluations stop no trial before half of it
    assert optuna.load_study(study_name="kddet", storage=storage).user_attrs["settings"]["prune_from"] == max_iter // 2

    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_value == pytest.approx(best.value)
    chosen = load_config(result.recipe_file, "KD.TEACHER.WEIGHTS", str(teacher_weights))
    assert chosen.KD.NST.WEIGHT == pytest.approx(best.params["KD.NST.WEIGHT"])
    assert chosen.KD.LOSSES == load_config(RECIPE).KD.LOSSES  # the recipe's own settings come through _BASE_
    header = result.recipe_file.read_text().splitlines()
    assert "tune_tiny_val" in header[1]
    assert header[2] == "# Every trial also set: " + " ".join(opts)  # what the trials were scored with
    report = result.report_file.read_text()
    assert report.count("| complete |") == 2 and report.count("| fail |") == 1
    assert (study_dir / "report.png").stat().st_size > 0

    with pytest.raises(ValueError, match="other settings"):
        tune(str(RECIPE), space, 2, str(study_dir), dataset="kddet_shapes_val", opts=opts)


def test_the_tool_shows_its_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tune_recipe.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "tools/tune_recipe.py"), run_name="__main__")
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--budget" in usage and "--eval-period" in usage
