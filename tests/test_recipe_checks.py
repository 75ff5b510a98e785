"""A recipe that would distil nothing does not train silently: the distillation settings are
checked when the trainer builds the model, and ``tools/train_net.py --check`` reports them all."""

import logging

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config, run_train_net
from kddet.data import register_voc_folder
from kddet.dry_run import dry_run
from kddet.engine import Trainer
from kddet.losses import KD_LOSS_REGISTRY, losses_need_teacher
from kddet.recipe_checks import check_distillation, distillation_problems, distillation_summary

SHAPES = REPO / "configs/shapes"
CONFIGS = sorted(REPO.glob("configs/**/*.yaml"))
RECIPES = [p for p in CONFIGS if load_config(p).KD.LOSSES]
CONFIG_ID = lambda path: str(path.relative_to(REPO / "configs").with_suffix(""))  # noqa: E731


def recipe(name, teacher_weights, *opts):
    return load_config(
        SHAPES / f"{name}.yaml",
        "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights), *opts,
    )  # fmt: skip


def warnings_of(cfg, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kddet"):
        check_distillation(cfg)
    return "\n".join(r.getMessage() for r in caplog.records)


def test_losses_under_a_meta_architecture_that_ignores_them_stop(teacher_weights):
    """The issue's new user: a student config with KD.LOSSES and a teacher, but GeneralizedRCNN."""
    cfg = load_config(
        STUDENT_CONFIG, "KD.LOSSES", ["FitNet"],
        "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights),
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        Trainer.build_model(cfg)
    message = str(info.value)
    assert "KD.LOSSES is ['FitNet']" in message and '"GeneralizedRCNN" ignores it' in message
    assert 'Set MODEL.META_ARCHITECTURE: "DistillationRCNN"' in message


def test_every_error_comes_in_one_message():
    cfg = load_config(STUDENT_CONFIG, "KD.LOSSES", ["FitNet", "FitNets"], "KD.FITNET.IN_FEATURES", [])
    with pytest.raises(ValueError) as info:
        check_distillation(cfg)
    message = str(info.value)
    assert "Unknown distillation loss(es) ['FitNets']" in message
    assert 'MODEL.META_ARCHITECTURE: "DistillationRCNN"' in message
    assert "KD.FITNET.IN_FEATURES is empty" in message


@pytest.mark.parametrize("max_iter, acts", [(50, False), (30, False), (51, True)])
def test_a_warmup_that_outlasts_the_schedule_warns(max_iter, acts, teacher_weights, caplog):
    cfg = recipe("fgfi", teacher_weights, "SOLVER.MAX_ITER", max_iter)  # KD.FGFI.WARMUP_ITERS 50
    logged = warnings_of(cfg, caplog)
    expected = f"FGFI can never act: KD.FGFI.WARMUP_ITERS = 50 >= SOLVER.MAX_ITER = {max_iter}"
    assert (expected in logged) == (not acts)


@pytest.mark.parametrize(
    "name, opts, keys",
    [
        ("fitnet", ("KD.FITNET.WEIGHT", 0.0), ["KD.FITNET.WEIGHT is 0"]),
        ("rkd", ("KD.RKD.DISTANCE_WEIGHT", 0.0, "KD.RKD.ANGLE_WEIGHT", 0.0),
         ["KD.RKD.DISTANCE_WEIGHT is 0", "KD.RKD.ANGLE_WEIGHT is 0"]),
        ("chen2017", ("KD.RPNSOFTCLS.MU", 1.0), ["1 - KD.RPNSOFTCLS.MU is 0"]),  # the soft term weighs 1 - MU
    ],
)  # fmt: skip
def test_a_loss_of_weight_zero_warns_naming_the_key(name, opts, keys, teacher_weights, caplog):
    logged = warnings_of(recipe(name, teacher_weights, *opts), caplog)
    assert "can never act" in logged and all(key in logged for key in keys)


def test_a_loss_with_one_of_two_weights_zero_still_acts(teacher_weights, caplog):
    assert "never act" not in warnings_of(recipe("rkd", teacher_weights, "KD.RKD.ANGLE_WEIGHT", 0.0), caplog)


def test_a_loss_without_levels_stops(teacher_weights):
    with pytest.raises(ValueError, match=r"KD.NST.IN_FEATURES is empty: NST reads no feature level"):
        check_distillation(recipe("nst", teacher_weights, "KD.NST.IN_FEATURES", []))


def test_an_edited_node_of_a_loss_not_enabled_warns_naming_both(teacher_weights, caplog):
    logged = warnings_of(recipe("fitnet", teacher_weights, "KD.NST.WEIGHT", 2.0, "KD.FGFI.PSI", 0.7), caplog)
    assert "KD.NST is edited (WEIGHT: 2.0), but NST is not in KD.LOSSES = ['FitNet']" in logged
    assert "KD.FGFI is edited (PSI: 0.7), but FGFI is not in KD.LOSSES" in logged
    assert "KD.FITNET" not in logged  # the enabled loss's node is meant to be edited


def test_distillation_rcnn_without_losses_warns_that_it_trains_the_student_alone(caplog):
    cfg = load_config(STUDENT_CONFIG, "MODEL.META_ARCHITECTURE", "DistillationRCNN")
    assert "KD.LOSSES is empty: it trains the student alone" in warnings_of(cfg, caplog)


def test_a_teacher_config_without_a_loss_that_reads_it_warns(caplog):
    cfg = load_config(SHAPES / "virtual_teacher.yaml", "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG))
    expected = "KD.TEACHER is set, but no loss in KD.LOSSES = ['VirtualTeacher'] reads a teacher"
    assert expected in warnings_of(cfg, caplog)


@pytest.mark.parametrize("config", RECIPES + [STUDENT_CONFIG, TEACHER_CONFIG], ids=CONFIG_ID)
def test_the_shipped_configs_have_nothing_to_warn_about(config):
    assert distillation_problems(load_config(config)) == ([], [])


def test_a_distilled_run_as_teacher_names_its_adapters_and_ignores_them(tmp_path, teacher_weights, caplog):
    """A FitNet student's checkpoint (student + kd_losses adapters) as the teacher of another run."""
    distilled = build_model(recipe("fitnet", teacher_weights))
    weights = tmp_path / "distilled.pth"
    torch.save({"model": distilled.state_dict()}, weights)
    adapters = sum(1 for key in distilled.state_dict() if key.startswith("kd_losses."))
    cfg = recipe("fitnet", weights, "KD.TEACHER.CONFIG_FILE", str(STUDENT_CONFIG))
    with caplog.at_level(logging.WARNING, logger="kddet"):
        teacher = build_model(cfg).teacher
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"hold {adapters} tensors the teacher config has no place for; they were ignored" in logged
    assert f"kd_losses.* ({adapters} tensors, the adapters of a distilled run)" in logged
    student_part = {k: v for k, v in distilled.state_dict().items() if not k.startswith("kd_losses.")}
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in student_part.items())


def test_the_training_log_has_the_summary(teacher_weights, caplog):
    cfg = recipe("chen2017", teacher_weights)
    with caplog.at_level(logging.INFO, logger="kddet"):
        model = Trainer.build_model(cfg)
    summary = "\n".join(r.getMessage() for r in caplog.records if r.name == "kddet.engine")
    assert f"teacher weights (KD.TEACHER.WEIGHTS): {teacher_weights}\n" in summary
    assert "| RPNSoftCls " in summary and "| 1 - MU 0.5 " in summary and "| RPN " in summary
    assert "| FitNet " in summary and "| p2 p3 p4 p5 p6 " in summary and "| features " in summary
    teacher_params = sum(p.numel() for p in model.teacher.parameters()) / 1e6
    assert "| teacher " in summary and f"{teacher_params:.2f} |" in summary
    assert "GFLOPs" not in summary  # FLOPs are the dry run's


def test_the_summary_says_which_losses_are_balanced():
    cfg = load_config(SHAPES / "combined.yaml", "KD.BALANCE.ENABLED", True, "KD.BALANCE.LOSSES", ["NST", "SP"])
    assert "KD.BALANCE: NST, SP measured for 20 iterations each, then held at 0.5 x the detector's losses" in (
        distillation_summary(cfg)
    )
    assert "KD.BALANCE" not in distillation_summary(load_config(SHAPES / "combined.yaml"))


def assert_passes_the_dry_run_but_for_absent_files(cfg, tmp_path):
    """Teacher weights, VOC/COCO ImageNet weights and the VOC and COCO data sets do not exist here:
    each is one error line, and the rest of the config is still built, checked and summarised."""
    if cfg.KD.TEACHER.WEIGHTS:  # never a checkpoint a local run left at the recipe's path
        cfg.KD.TEACHER.WEIGHTS = str(tmp_path / "missing_teacher.pth")
    report, num_errors = dry_run(cfg, flops=False)
    errors = [line for line in report.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == num_errors
    absent = ("ERROR: Teacher weights not found", "ERROR: MODEL.WEIGHTS not found")
    absent_data = tuple(f"ERROR: Data set '{name}' in DATASETS.TEST could not be loaded" for name in ABSENT_DATA)
    assert all(e.startswith(absent + absent_data) for e in errors), errors
    assert all(f"| {name} " in report for name in cfg.KD.LOSSES)
    assert "| student " in report and ("| teacher " in report) == losses_need_teacher(cfg)


ABSENT_DATA = ("voc_2007_test", "coco_2017_val")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_ID)
def test_every_config_passes_the_dry_run(config, monkeypatch, tmp_path, datasets_root):
    monkeypatch.chdir(REPO)  # recipes name their teacher config relative to the repository
    assert_passes_the_dry_run_but_for_absent_files(load_config(config), tmp_path)


@pytest.mark.parametrize("loss", [name for name, _ in KD_LOSS_REGISTRY])
def test_any_loss_at_its_defaults_over_base_distill_passes_the_dry_run(loss, teacher_weights, tmp_path, datasets_root):
    """configs/README.md: a one-loss recipe is KD.LOSSES on the command line, as the shell passes it."""
    opts = ("KD.LOSSES", f'["{loss}"]', "KD.TEACHER.WEIGHTS", str(teacher_weights))
    cfg = load_config(SHAPES / "Base-Distill.yaml", *opts)
    assert list(cfg.KD.LOSSES) == [loss]
    report, num_errors = dry_run(cfg, flops=False)
    assert num_errors == 0 and f"| {loss} " in report, report


def test_losses_over_the_voc_base_pass_the_dry_run(monkeypatch, tmp_path, datasets_root):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "configs/voc/Base-Distill.yaml", "KD.LOSSES", '["FGFI", "NST"]', "KD.NST.WEIGHT", "50.0")
    assert list(cfg.KD.LOSSES) == ["FGFI", "NST"] and cfg.KD.NST.WEIGHT == 50.0
    assert_passes_the_dry_run_but_for_absent_files(cfg, tmp_path)


def test_check_prints_everything_wrong_and_does_not_train(tmp_path, datasets_root):
    out = tmp_path / "out"
    proc = run_train_net(
        "--check", "--config-file", STUDENT_CONFIG, "KD.LOSSES", '["FitNet"]', "KD.FITNET.WEIGHT", 0.0,
        "KD.TEACHER.CONFIG_FILE", TEACHER_CONFIG, "KD.TEACHER.WEIGHTS", tmp_path / "missing.pth",
        "OUTPUT_DIR", out, datasets_root=datasets_root, returncode=1,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "Starting training" not in proc.stdout + proc.stderr
    assert not out.exists()
    lines = proc.stdout.splitlines()
    arch_error = "ERROR: KD.LOSSES is ['FitNet'], but MODEL.META_ARCHITECTURE \"GeneralizedRCNN\" ignores it"
    assert any(line.startswith(arch_error) for line in lines)
    assert any(line.startswith(f"ERROR: Teacher weights not found: '{tmp_path / 'missing.pth'}'") for line in lines)
    assert any(line.startswith("WARNING: FitNet can never act: KD.FITNET.WEIGHT is 0") for line in lines)
    assert "| FitNet " in proc.stdout and "GFLOPs / image" in proc.stdout
    assert lines[-1] == "2 error(s), 1 warning(s): fix the errors before training."


def test_check_of_a_sound_recipe_exits_zero(teacher_weights, tmp_path, datasets_root):
    proc = run_train_net(
        "--check", "--config-file", SHAPES / "fgfi.yaml", "KD.TEACHER.WEIGHTS", teacher_weights,
        "OUTPUT_DIR", tmp_path / "out", datasets_root=datasets_root,
    )  # fmt: skip
    assert f"teacher weights (KD.TEACHER.WEIGHTS): {teacher_weights}\n" in proc.stdout
    assert "| FGFI " in proc.stdout and "| 50 " in proc.stdout and "| features + RPN " in proc.stdout
    assert proc.stdout.splitlines()[-1] == "0 error(s), 0 warning(s): ready to train."


def test_the_dry_run_checks_the_test_sets_as_training_does(teacher_weights, tmp_path, datasets_root):
    """What the trainer refuses before its first step (kddet.evaluation.check_test_datasets), --check
    reports: a test set that is not registered, one whose files are missing, capped detections."""
    register_voc_folder("kddet_test_check_missing_voc", str(tmp_path / "no_voc"), "test", 2012, ["thing"])
    crowded = "kddet_test_check_crowded"
    boxes = [{"bbox": [i, i, i + 4, i + 4], "bbox_mode": 0, "category_id": 0} for i in range(3)]
    DatasetCatalog.register(crowded, lambda: [{"file_name": "a.png", "height": 32, "width": 32, "annotations": boxes}])
    MetadataCatalog.get(crowded).set(thing_classes=["thing"], evaluator_type="coco")
    tests = "('kddet_test_check_unregistered', 'kddet_test_check_missing_voc', 'kddet_test_check_crowded')"
    cfg = recipe("fitnet", teacher_weights, "DATASETS.TEST", tests, "TEST.DETECTIONS_PER_IMAGE", 2)
    report, num_errors = dry_run(cfg, flops=False)
    lines = report.splitlines()
    assert num_errors == 2 and lines[-1].startswith("2 error(s)"), report
    assert "ERROR: Data set 'kddet_test_check_unregistered' in DATASETS.TEST is not registered." in report
    missing = "ERROR: Data set 'kddet_test_check_missing_voc' in DATASETS.TEST could not be loaded (FileNotFoundError: "
    assert any(line.startswith(missing) and "remove it from DATASETS.TEST" in line for line in lines)
    assert any(
        line.startswith(f"WARNING: 1 of the 1 images of '{crowded}' have more ground-truth boxes") for line in lines
    )
    assert dry_run(recipe("fitnet", teacher_weights), flops=False)[1] == 0  # kddet_shapes_val loads and is scored
