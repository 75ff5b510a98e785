"""KD.TEACHER.INIT_STUDENT: the student starts from its teacher's FPN and heads where names and shapes
match, keeps its MODEL.WEIGHTS in the feature extractor, reports what it skipped, and a resumed run
is not copied into again."""

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.dry_run import dry_run
from kddet.engine import Trainer
from kddet.inherit import NO_TEACHER, NOTHING_INHERITED, inherit_from_teacher, inheritance_plan
from kddet.modeling import DistillationRCNN

# The shapes student with the teacher's FPN and box-head widths: its FPN output convs, RPN head and
# box head match the teacher's; the lateral convs read a narrower bottom-up network and do not.
SAME_HEAD_WIDTHS = ("MODEL.FPN.OUT_CHANNELS", 128, "MODEL.ROI_BOX_HEAD.FC_DIM", 512)
COPIED = ["backbone.fpn_output2.weight", "proposal_generator.rpn_head.conv.weight", "roi_heads.box_head.fc2.weight"]


def inheriting_cfg(teacher_weights, tmp_path, *opts):
    return load_config(
        STUDENT_CONFIG, *SAME_HEAD_WIDTHS,
        "MODEL.META_ARCHITECTURE", "DistillationRCNN",
        "KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights),
        "KD.LOSSES", ["FitNet"], "KD.TEACHER.INIT_STUDENT", True,
        "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "run"),
        *opts,
    )  # fmt: skip


@pytest.fixture(scope="module")
def student_weights(tmp_path_factory):
    """A student checkpoint (seed 1) for MODEL.WEIGHTS, with the teacher's head widths."""
    out = tmp_path_factory.mktemp("student")
    torch.manual_seed(1)
    DetectionCheckpointer(build_model(load_config(STUDENT_CONFIG, *SAME_HEAD_WIDTHS)), save_dir=str(out)).save(
        "model_final"
    )
    return out / "model_final.pth"


def test_the_student_takes_matching_tensors_after_its_weights_and_keeps_its_feature_extractor(
    teacher_weights, student_weights, datasets_root, tmp_path
):
    trainer = Trainer(inheriting_cfg(teacher_weights, tmp_path, "MODEL.WEIGHTS", str(student_weights)))
    own = DetectionCheckpointer(trainer.model)._load_file(str(student_weights))["model"]
    trainer.resume_or_load(resume=False)
    student, teacher = trainer.model.state_dict(), trainer.model.teacher.state_dict()
    for name in COPIED:
        assert torch.equal(student[name], teacher[name]) and not torch.equal(student[name], own[name]), name
    extractor = [name for name in student if name.startswith("backbone.bottom_up.")]
    assert extractor and all(torch.equal(student[name], torch.as_tensor(own[name])) for name in extractor)
    # A lateral conv reads the bottom-up network, narrower in the student: its weight and its bias stay the student's.
    for name in ("backbone.fpn_lateral2.weight", "backbone.fpn_lateral2.bias"):
        assert torch.equal(student[name], torch.as_tensor(own[name])), name


def test_a_shape_mismatch_is_skipped_and_reported(teacher_weights, tmp_path):
    model = DistillationRCNN(inheriting_cfg(teacher_weights, tmp_path))
    adapters = {k: v.clone() for k, v in model.kd_losses.state_dict().items()}
    plan = inherit_from_teacher(model)
    skipped = dict(plan.skipped)
    assert skipped["backbone.fpn_lateral2.weight"] == "shapes differ: teacher (128, 32, 1, 1), student (128, 16, 1, 1)"
    assert skipped["backbone.fpn_lateral2.bias"] == "another tensor of backbone.fpn_lateral2 differs"
    assert set(COPIED) <= set(plan.copied) and not any(name.startswith("backbone.bottom_up.") for name in plan.copied)
    assert all(torch.equal(v, model.kd_losses.state_dict()[k]) for k, v in adapters.items())
    report = plan.describe()
    assert f"{len(plan.copied)} teacher tensor(s) copied into the student, {len(plan.skipped)} not copied" in report
    assert "not copied: backbone.fpn_lateral2.weight (shapes differ" in report


def test_resuming_does_not_copy_again(teacher_weights, datasets_root, tmp_path):
    cfg = inheriting_cfg(teacher_weights, tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with torch.no_grad():
        trainer.model.roi_heads.box_head.fc2.weight.zero_()  # as if training had moved it
    trainer.checkpointer.save("model_0000000")
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert not resumed.model.roi_heads.box_head.fc2.weight.any()


def test_check_reports_the_inheritance(teacher_weights, tmp_path):
    report, num_errors = dry_run(inheriting_cfg(teacher_weights, tmp_path), flops=False)
    assert num_errors == 0 and "KD.TEACHER.INIT_STUDENT: " in report
    assert "not copied: backbone.fpn_lateral2.weight (shapes differ: teacher (128, 32, 1, 1)" in report
    narrow = inheriting_cfg(teacher_weights, tmp_path, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 256)
    report, num_errors = dry_run(narrow, flops=False)
    assert num_errors == 0 and f"WARNING: {NOTHING_INHERITED}" in report and "0 teacher tensor(s) copied" in report
    no_teacher = inheriting_cfg(teacher_weights, tmp_path, "KD.LOSSES", ["VirtualTeacher"])
    report, num_errors = dry_run(no_teacher, flops=False)
    assert num_errors == 1 and NO_TEACHER in report


def test_the_headline_student_takes_all_the_teacher_has_outside_its_backbone_but_the_lateral_convs(teacher_weights):
    config = REPO / "configs/shapes/mobilenet_v2_wide/fgd_inheriting.yaml"
    model = DistillationRCNN(load_config(config, "MODEL.WEIGHTS", "", "KD.TEACHER.WEIGHTS", str(teacher_weights)))
    plan = inheritance_plan(model)
    layers = {".".join(name.split(".")[:2]) for name in plan.copied}
    heads = {"proposal_generator.rpn_head", "roi_heads.box_head", "roi_heads.box_predictor"}
    assert layers == {f"backbone.fpn_output{level}" for level in range(2, 6)} | heads
    assert {name.split(".")[1] for name, _ in plan.skipped} == {f"fpn_lateral{level}" for level in range(2, 6)}
    assert not plan.student_only  # the teacher has every tensor of the student's neck and heads


def test_the_voc_headline_recipe_inherits_all_but_the_lateral_convs_of_its_r101_teacher(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # the recipe names its teacher config relative to the repository
    cfg = load_config(REPO / "configs/voc/fgd_inheriting_mobilenet_v2.yaml", "OUTPUT_DIR", str(tmp_path))
    report, _ = dry_run(cfg, flops=False)  # its errors are the absent teacher weights and VOC files
    assert "22 teacher tensor(s) copied into the student, 8 not copied" in report
    skipped = [line for line in report.splitlines() if line.strip().startswith("not copied: ")]
    assert len(skipped) == 8 and all("backbone.fpn_lateral" in line for line in skipped)
