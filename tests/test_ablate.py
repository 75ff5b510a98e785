"""tools/ablate.py: every variant of every study is a valid config, and its table reads as make_results' does."""
import importlib.util
import math
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
spec = importlib.util.spec_from_file_location("ablate", REPO / "tools/ablate.py")
ablate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablate)
mr = ablate.mr


@pytest.mark.parametrize("study", sorted(ablate.STUDIES))
def test_every_variant_loads_and_changes_what_it_says(study):
    for name, recipe, opts in ablate.STUDIES[study]:
        cfg = mr.load_config(ablate.config_of(recipe), [str(o) for o in opts])  # an unknown key would raise here
        for key, value in zip(opts[::2], opts[1::2]):
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == (list(value) if isinstance(value, (list, tuple)) and isinstance(node, list) else value), (name, key)


def test_table_rows_follow_the_variants_with_deltas_against_the_student():
    def runs(*aps):
        return [{"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "minutes": 1.0, "iters": 300} for ap in aps]

    variants = [("a", "fitnet", []), ("b", "fitnet", ["KD.BALANCE.ENABLED", True])]
    rows = mr.summarize({"AP": 40.0}, {"student": runs(19, 20, 21), "0": runs(20, 21, 22), "1": runs(29, 30, 31)})
    table = ablate.format_markdown("fitnet", {"AP": 40.0}, rows, variants, {"argv": ["fitnet"], "commit": "abc", "dataset": "kddet_shapes_val"})
    assert "| a | `fitnet` | `(as committed)` | 3 | 21.0 ± 1.0 | 41.0 ± 1.0 | +1.0 | ±2.3 | +5% | within noise |" in table
    assert "| b | `fitnet` | `KD.BALANCE.ENABLED True` | 3 | 30.0 ± 1.0 | 50.0 ± 1.0 | +10.0 | ±2.3 | +50% | helps |" in table
    no_teacher = ablate.format_markdown("variance", {"AP": math.nan}, rows, variants, {"argv": [], "commit": "abc", "dataset": "kddet_shapes_val"})
    assert "teacher" not in no_teacher.split("\n")[4]
    assert "AP per class" not in table  # the runs have no per-class figures


def test_the_ablation_table_names_each_variant_in_its_per_class_table():
    def runs(*bars):
        return [{"AP": 20.0, "AP50": 40.0, "AP75": 15.0, "minutes": 1.0, "iters": 300, "per_class": {"disk": 30.0, "bar": bar}} for bar in bars]

    teacher = {"AP": 40.0, "per_class": {"disk": 50.0, "bar": 45.0}}
    rows = mr.summarize(teacher, {"student": runs(10, 12), "0": runs(4, 6)})
    table = ablate.format_markdown("fitnet", teacher, rows, [("p2 only", "fitnet", ["KD.FITNET.IN_FEATURES", ["p2"]])],
                                   {"argv": ["fitnet"], "commit": "abc", "dataset": "kddet_shapes_val"})
    per_class = table.split("AP per class")[1]
    assert "| teacher | 50.0 | 45.0 |" in per_class
    assert "| student alone | 30.0 ± 0.0 | 11.0 ± 1.4 |" in per_class and "| p2 only | 30.0 ± 0.0 | 5.0 ± 1.4 |" in per_class


@pytest.mark.parametrize("study", [study for study in ablate.STUDIES if study.endswith("pretrained")])
def test_the_pretrained_studies_compare_the_mobilenet_v2_student_with_itself(study):
    baseline = mr.load_config(ablate.config_of(ablate.baseline_of(study)))
    assert baseline.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone" and not baseline.KD.LOSSES
    for _, recipe, opts in ablate.STUDIES[study]:
        cfg = mr.load_config(ablate.config_of(recipe), [str(o) for o in opts])
        assert cfg.MODEL.BACKBONE == baseline.MODEL.BACKBONE and cfg.MODEL.WEIGHTS == baseline.MODEL.WEIGHTS


def test_the_pretrained_study_table_starts_with_the_mobilenet_v2_student():
    assert ablate.baseline_of("fitnet") == "student"
    rows = mr.summarize({"AP": 40.0}, {"student": [{"AP": 30.0, "AP50": 50.0, "AP75": 25.0, "minutes": 1.0, "iters": 300}]})
    table = ablate.format_markdown("pretrained", {"AP": 40.0}, rows, [], {"argv": ["pretrained"], "commit": "abc", "dataset": "kddet_shapes_test"})
    assert "| student alone | `mobilenet_v2/student` | | 1 | 30.0 | 50.0 |" in table


@pytest.mark.parametrize("study", ["fast_teacher", "fast_teacher_nst"])
def test_a_fast_teacher_study_changes_only_how_the_teacher_computes(study):
    baseline = mr.load_config(ablate.config_of(ablate.baseline_of(study)))
    (_, recipe, opts), = ablate.STUDIES[study]
    assert recipe == ablate.baseline_of(study)
    variant = mr.load_config(ablate.config_of(recipe), [str(o) for o in opts])
    assert (variant.KD.TEACHER.PRECISION, variant.KD.TEACHER.CHANNELS_LAST) == ("bf16", True)
    variant.KD.TEACHER.PRECISION, variant.KD.TEACHER.CHANNELS_LAST = baseline.KD.TEACHER.PRECISION, baseline.KD.TEACHER.CHANNELS_LAST
    assert variant.dump() == baseline.dump()

    rows = mr.summarize({"AP": 40.0}, {"student": [{"AP": 30.0, "AP50": 50.0, "AP75": 25.0, "minutes": 1.0, "iters": 300}]})
    table = ablate.format_markdown(study, {"AP": 40.0}, rows, [], {"argv": [study], "commit": "abc", "dataset": "kddet_shapes_val"})
    assert f"| recipe as committed | `{recipe}` | | 1 | 30.0 | 50.0 |" in table
