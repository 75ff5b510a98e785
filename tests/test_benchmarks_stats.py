"""kddet.benchmarks.stats: means over seeds, Welch's t-test against the baseline and Holm's correction,
checked against direct computations and a hand-worked example."""

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from kddet.benchmarks.stats import compare, holm, holm_verdict, summarize, verdict


def record(ap, ap50=50.0, ap75=20.0, minutes=1.0, iters=300, **extra):
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "minutes": minutes, "iters": iters, **extra}


def test_summary_means_deltas_and_gap_fraction_match_a_direct_computation():
    teacher = record(40.0)
    runs = {
        "student": [record(19.0), record(20.0), record(21.0)],
        "fitnet": [record(22.0, ap50=40.0), record(24.0, ap50=44.0), record(23.0, ap50=42.0)],
    }
    student, fitnet = summarize(teacher, runs)
    assert student["name"] == "student" and fitnet["name"] == "fitnet"
    assert fitnet["AP"] == pytest.approx(23.0) and fitnet["AP50"] == pytest.approx(42.0)
    assert fitnet["AP_std"] == pytest.approx(1.0) and fitnet["AP50_std"] == pytest.approx(2.0)  # sample std
    assert fitnet["delta"] == pytest.approx(3.0)
    assert fitnet["delta_se"] == pytest.approx(math.sqrt(1 / 3 + 1 / 3))
    # Welch-Satterthwaite: (1/3 + 1/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4
    assert fitnet["delta_dof"] == pytest.approx(4.0)
    assert fitnet["gap_recovered"] == pytest.approx(3.0 / 20.0)
    assert student["delta"] == pytest.approx(0.0)
    slow = summarize(teacher, {"student": [record(20.0, minutes=m) for m in (2.0, 2.5, 34.0)]})[0]
    assert slow["minutes"] == pytest.approx(2.5)  # the median: one run slowed by other work does not count


def test_the_p_value_is_scipys_welch_test_on_the_seeds_values():
    student_ap, kd_ap = [19.0, 20.5, 21.0, 20.2], [22.0, 24.5, 23.0]
    _, kd = summarize(record(40.0), {"student": [record(a) for a in student_ap], "kd": [record(a) for a in kd_ap]})
    expected = scipy_stats.ttest_ind(kd_ap, student_ap, equal_var=False)
    assert kd["p_value"] == pytest.approx(expected.pvalue)
    assert kd["delta"] / kd["delta_se"] == pytest.approx(expected.statistic)


def test_every_run_is_kept_with_its_seed_so_that_the_table_renders_again_exactly():
    runs = {
        "student": [record(19.0, seed=1, per_class={"bar": 9.0}), record(21.0, seed=2, per_class={"bar": 11.0})],
        "kd": [record(22.0, seed=1, per_class={"bar": 12.0}), {"diverged": True, "minutes": 0.5, "seed": 2}],
    }
    rows = summarize(record(40.0), runs)
    assert [run["seed"] for run in rows[1]["runs"]] == [1, 2] and rows[1]["runs"][1]["diverged"]
    assert rows[0]["runs"][0] == {"seed": 1, "AP": 19.0, "AP50": 50.0, "AP75": 20.0, "per_class": {"bar": 9.0},
                                  "iters": 300, "minutes": 1.0}  # fmt: skip
    assert summarize(record(40.0), {row["name"]: row["runs"] for row in rows}) == rows
    # From the means, stds and seeds alone (a table older than the runs in its JSON): the same statistics.
    bare = [{k: v for k, v in row.items() if k not in ("runs", "delta", "p_value", "holm")} for row in rows]
    assert compare(record(40.0), bare) == [{k: v for k, v in row.items() if k != "runs"} for row in rows]


def test_per_class_ap_is_averaged_over_seeds():
    runs = {"student": [record(20.0, per_class={"bar": 10.0}), record(22.0, per_class={"bar": 14.0})]}
    assert summarize(record(40.0), runs)[0]["per_class"]["bar"] == pytest.approx((12.0, statistics.stdev([10.0, 14.0])))


def test_verdict_is_a_welch_t_test_at_95_percent_with_a_printable_change():
    row = {"delta_se": 0.5, "delta_dof": 4.0, "detectable": scipy_stats.t.ppf(0.975, 4) * 0.5}  # 1.39 AP
    assert verdict({**row, "delta": 1.5}) == "helps"
    assert verdict({**row, "delta": -1.5}) == "hurts"
    assert verdict({**row, "delta": 1.2}) == "within noise"  # beyond 2 SE, not beyond t(4) SE
    assert verdict({**row, "delta": row["detectable"] + 1e-6}) == "helps"
    assert verdict({**row, "delta": row["detectable"] - 1e-6}) == "within noise"
    assert verdict({"delta_se": 0.0, "detectable": 0.0, "delta": -1e-6}) == "within noise"  # rounds to 0.0
    assert verdict({"delta_se": math.nan, "detectable": math.nan, "delta": 5.0}) == "one seed"


def test_the_detectable_change_is_where_the_p_value_crosses_5_percent():
    student = [record(a) for a in (19.0, 20.0, 21.0)]
    for shift in (2.0, 2.7, 4.0):
        _, row = summarize(record(40.0), {"student": student, "r": [record(a + shift) for a in (19.0, 20.0, 21.0)]})
        assert (row["p_value"] < 0.05) == (abs(row["delta"]) > row["detectable"])
    assert row["detectable"] == pytest.approx(scipy_stats.t.ppf(0.975, 4) * math.sqrt(2 / 3))


def test_holm_matches_a_hand_worked_example():
    # m = 4, sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop; 0.04 is not tested further.
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # Each alone passes at 5%; corrected, 0.02 > 0.05/3 fails first and the rest with it.
    assert holm([0.02, 0.03, 0.04]) == [False, False, False]
    assert holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05/1
    assert holm([math.nan, 0.001]) == [False, True] and holm([]) == []


def test_holm_is_applied_to_the_rows_compared_with_one_baseline():
    base = {"name": "student", "AP": 20.0, "AP_std": 1.0, "seeds": 10}
    rows = [
        base,
        {"name": "a", "AP": 23.0, "AP_std": 1.0, "seeds": 5},  # p far below 0.05
        {"name": "b", "AP": 21.3, "AP_std": 1.0, "seeds": 5},  # p about 0.04: helps alone, not after Holm
        {"name": "c", "AP": 20.1, "AP_std": 1.0, "seeds": 5},
        {"name": "d", "AP": 25.0, "AP_std": math.nan, "seeds": 1},  # one seed: no test, not counted
    ]
    _, a, b, c, d = compare({"AP": 30.0}, rows)
    assert 0.02 < b["p_value"] < 0.05 and verdict(b) == "helps"
    assert holm([a["p_value"], b["p_value"], c["p_value"]]) == [a["holm"], b["holm"], c["holm"]] == [True, False, False]
    assert (holm_verdict(a), holm_verdict(b), holm_verdict(c)) == ("helps", "within noise", "within noise")
    assert "holm" not in d and holm_verdict(d) == verdict(d) == "one seed"


def test_single_seed_has_no_std_and_a_zero_gap_has_no_fraction():
    student, kd = summarize(record(10.0), {"student": [record(10.0)], "kd": [record(11.0)]})
    assert math.isnan(kd["AP_std"]) and math.isnan(kd["delta_se"])
    assert math.isnan(kd["gap_recovered"])  # teacher no better than the student: no gap to recover


def test_a_diverged_seed_is_counted_not_averaged():
    runs = {
        "student": [record(19.0), record(20.0), record(21.0)],
        "kd": [record(22.0), {"diverged": True, "minutes": 0.5}, record(24.0)],
        "sp": [{"diverged": True, "minutes": 0.5}],
    }
    _, kd, sp = summarize(record(40.0), runs)
    assert (kd["seeds"], kd["diverged"]) == (2, 1) and kd["AP"] == pytest.approx(23.0)
    assert math.isnan(sp["AP"]) and verdict(sp) == "every seed diverged" and "holm" not in sp
