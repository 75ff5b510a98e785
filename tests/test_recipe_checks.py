"""A recipe that would distil nothing does not train silently: the distillation settings are
checked when the trainer builds the model, and ``tools/train_net.py --check`` reports them all."""
import logging

import pytest
import torch

from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config, run_train_net
from kddet.dry_run import dry_run
from kddet.engine import Trainer
from kddet.recipe_checks import check_distillation, distillation_problems, distillation_summary

SHAPES = REPO / "configs/shapes"
RECIPES = sorted(p for p in REPO.glob("configs/**/*.yaml") if load_config(p).KD.LOSSES)
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
    assert f"| teacher " in summary and f"{teacher_params:.2f} |" in summary
    assert "GFLOPs" not in summary  # FLOPs are the dry run's


def test_the_summary_says_which_losses_are_balanced():
    cfg = load_config(SHAPES / "combined.yaml", "KD.BALANCE.ENABLED", True, "KD.BALANCE.LOSSES", ["NST", "SP"])
    assert "KD.BALANCE: NST, SP measured for 20 iterations each, then held at 0.5 x the detector's losses" in (
        distillation_summary(cfg)
    )
    assert "KD.BALANCE" not in distillation_summary(load_config(SHAPES / "combined.yaml"))


@pytest.mark.parametrize("config", RECIPES, ids=CONFIG_ID)
def test_the_dry_run_summarises_every_recipe(config, monkeypatch, tmp_path):
    """Teacher (and VOC/COCO ImageNet) weights do not exist here: each is one error line, and the
    rest of the recipe is still built and summarised."""
    monkeypatch.chdir(REPO)  # recipes name their teacher config relative to the repository
    cfg = load_config(config)
    if cfg.KD.TEACHER.WEIGHTS:  # never a checkpoint a local run left at the recipe's path
        cfg.KD.TEACHER.WEIGHTS = str(tmp_path / "missing_teacher.pth")
    report, num_errors = dry_run(cfg, flops=False)
    errors = [line for line in report.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == num_errors
    assert all(e.startswith(("ERROR: Teacher weights not found", "ERROR: MODEL.WEIGHTS not found")) for e in errors)
    assert all(f"| {name} " in report for name in cfg.KD.LOSSES)
    assert "| student " in report and ("| teacher " in report) == (cfg.KD.LOSSES != ["VirtualTeacher"])


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
    arch_error = 'ERROR: KD.LOSSES is [\'FitNet\'], but MODEL.META_ARCHITECTURE "GeneralizedRCNN" ignores it'
    assert any(l.startswith(arch_error) for l in lines)
    assert any(l.startswith(f"ERROR: Teacher weights not found: '{tmp_path / 'missing.pth'}'") for l in lines)
    assert any(l.startswith("WARNING: FitNet can never act: KD.FITNET.WEIGHT is 0") for l in lines)
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
