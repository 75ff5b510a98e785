"""tools/demo.py: its table, the gain against the gap, and the seed spread it quotes from the results."""

import importlib.util
import json

from conftest import REPO

from kddet.benchmarks.cache import student_settings
from kddet.benchmarks.schedule import schedule_iters

spec = importlib.util.spec_from_file_location("demo", REPO / "tools/demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def run(ap):
    return {"AP": ap, "AP50": ap + 20, "AP75": ap - 5, "iters": 300, "minutes": 1.5}


def test_table_states_gain_gap_and_the_students_spread_from_the_results_table():
    rows = {"teacher": run(40.0), "student": run(20.0), "combined": run(32.0)}
    results = {
        "setting": {"student_settings": "abc"},
        "rows": [
            {"name": "student", "AP": 20.4, "AP_std": 0.6, "seeds": 5},
            {"name": "combined", "AP": 31.5, "AP_std": 0.9, "seeds": 5},
        ],
    }
    student = demo.student_spread(results, "abc")
    assert student["AP"] == 20.4
    table = demo.format_table(rows, student, REPO / "results/embedded_scratch.json")
    assert (
        "| student + combined recipe (NST, SP, Chen et al.'s head losses) | 300 | 1.5 | 32.0 | 52.0 | 27.0 |" in table
    )
    assert (
        "Teacher-student gap 20.0 AP; the combined recipe changes the student by +12.0 AP (+60% of the gap)." in table
    )
    assert "the student alone scores 20.4 ± 0.6 AP over 5 seeds (results/embedded_scratch.md, the same runs)" in table


def test_the_spread_comes_from_the_first_table_whose_student_is_the_demos(tmp_path, monkeypatch):
    full, custom = tmp_path / "embedded_scratch.json", tmp_path / "embedded_scratch_custom.json"
    monkeypatch.setattr(demo, "RESULTS", [full, custom])
    assert demo.quoted_spread("new") == (None, None)
    row = {"name": "student", "AP": 21.0, "AP_std": 1.4, "seeds": 10}
    custom.write_text(json.dumps({"setting": {"student_settings": "new"}, "rows": [row]}))
    full.write_text(json.dumps({"setting": {"student_settings": "old"}, "rows": [dict(row, AP=20.0)]}))
    assert demo.quoted_spread("new") == (row, custom)
    full.write_text(json.dumps({"setting": {"student_settings": "new"}, "rows": [dict(row, AP=20.0)]}))
    assert demo.quoted_spread("new") == (dict(row, AP=20.0), full)


def test_without_a_results_table_the_demo_still_prints_its_own():
    rows = {"teacher": run(40.0), "student": run(20.0), "combined": run(19.0)}
    table = demo.format_table(rows, demo.student_spread(None, "abc"))
    assert "changes the student by -1.0 AP (-5% of the gap)" in table and "Seed to seed" not in table


def test_a_table_of_other_student_settings_is_not_quoted_and_the_demo_says_how_to_regenerate_it():
    rows = {"teacher": run(40.0), "student": run(20.0), "combined": run(32.0)}
    old_table = {"setting": {}, "rows": [{"name": "student", "AP": 20.4, "AP_std": 0.6, "seeds": 5}]}
    other_settings = {"setting": {"student_settings": "old"}, "rows": old_table["rows"]}
    for results in (old_table, other_settings):
        student = demo.student_spread(results, "new")
        assert student is None
        table = demo.format_table(rows, student, table_is_stale=True)
        assert "Seed to seed" not in table and "--benchmark scratch` regenerates it" in table


def test_the_students_settings_fingerprint_ignores_seed_device_and_folder_but_not_anchors():
    config = REPO / demo.RUNS[1][1]
    settings = student_settings
    assert demo.student_settings() == settings(config, 300)
    assert settings(config, 300, ["SEED", "7", "MODEL.DEVICE", "cuda", "OUTPUT_DIR", "/tmp/x"]) == settings(config, 300)
    assert settings(config, 300, ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]"]) != settings(config, 300)
    assert settings(config, 600) != settings(config, 300)


def test_the_demo_trains_the_results_tables_demo_schedule():
    # Ten minutes on a 2-core CPU: the teacher 400 iterations, the students 300.
    assert (demo.TEACHER_ITERS, demo.STUDENT_ITERS) == (400, 300)
    # The demo's student is the results table's (same config, same iterations), so the table's spread is its own.
    assert demo.STUDENT_ITERS == schedule_iters("full")[1]
    assert all((REPO / config).is_file() for _, config, _, _ in demo.RUNS)
