"""The statistics of a table: means over seeds, each row's change against the baseline (the first
row), Welch's t-test of that change, and Holm's correction over the rows tested against one baseline."""

import math
import statistics
import warnings
from typing import Dict, List, Sequence, Tuple

from scipy import stats

ALPHA = 0.05  # two-sided
SMALLEST_PRINTED = 0.1  # AP: a change the tables round to zero is no change


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (nan for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(teacher: dict, runs: Dict[str, List[dict]]) -> List[dict]:
    """One row per model of ``runs`` (name -> its runs' records, the baseline first): AP/AP50/AP75 mean
    and std over the seeds that finished, the runs themselves (``runs``: seed values, for re-rendering),
    and the comparison with the first model (see ``compare``)."""
    rows = []
    for name, all_records in runs.items():
        # Statistics over the seeds that finished; those that diverged are counted beside them.
        records = [r for r in all_records if not r.get("diverged")]
        row = {
            "name": name, "seeds": len(records), "diverged": len(all_records) - len(records),
            # The median: a run that shared the cores with other work does not move it.
            "minutes": statistics.median(r["minutes"] for r in all_records),
            "runs": [_seed_values(r) for r in all_records],
        }  # fmt: skip
        if not records:
            nan = math.nan
            rows.append(dict(row, iters=0, AP=nan, AP_std=nan, AP50=nan, AP50_std=nan, AP75=nan, AP75_std=nan))
            continue
        row["iters"] = records[0]["iters"]
        for metric in ("AP", "AP50", "AP75"):
            row[metric], row[metric + "_std"] = mean_std([r[metric] for r in records])
        if all("per_class" in r for r in records):
            row["per_class"] = {c: mean_std([r["per_class"][c] for r in records]) for c in records[0]["per_class"]}
        rows.append(row)
    return compare(teacher, rows)


def _seed_values(record: dict) -> dict:
    keep = ("seed", "AP", "AP50", "AP75", "per_class", "iters", "minutes", "diverged")
    return {k: record[k] for k in keep if k in record}


def compare(teacher: dict, rows: List[dict]) -> List[dict]:
    """``rows`` with each one's change of AP against the first row's (``delta``), its standard error
    and Welch-Satterthwaite degrees of freedom, Welch's two-sided p-value, the smallest change the
    test detects at that spread (``detectable``), the fraction of the teacher-student gap the change
    recovers, and whether its verdict survives Holm's correction over the rows compared (``holm``).
    Works from each row's mean, std and seeds alone, so that a table is re-rendered from its JSON."""
    base = rows[0]
    gap = teacher["AP"] - base["AP"]
    rows = [dict(row, **welch(row, base), gap_recovered=math.nan) for row in rows]
    for row in rows:
        if gap > 0:
            row["gap_recovered"] = row["delta"] / gap
    tested = [i for i, row in enumerate(rows[1:], 1) if verdict(row) in ("helps", "hurts", "within noise")]
    for i, survives in zip(tested, holm([rows[i]["p_value"] for i in tested])):
        rows[i]["holm"] = survives
    return rows


def welch(row: dict, base: dict) -> dict:
    """Welch's t-test of ``row``'s mean AP against ``base``'s, from their means, stds and seeds."""
    n, m = row["seeds"], base["seeds"]
    delta = row["AP"] - base["AP"]
    if n < 2 or m < 2:  # no spread to test against
        return {
            "delta": delta,
            "delta_se": math.nan,
            "delta_dof": math.nan,
            "p_value": math.nan,
            "detectable": math.nan,
        }
    a, b = row["AP_std"] ** 2 / n, base["AP_std"] ** 2 / m
    se = math.sqrt(a + b)
    denominator = a**2 / (n - 1) + b**2 / (m - 1)
    dof = (a + b) ** 2 / denominator if denominator > 0 else math.inf
    if se > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the baseline compared with itself
            p_value = float(
                stats.ttest_ind_from_stats(row["AP"], row["AP_std"], n, base["AP"], base["AP_std"], m, False).pvalue
            )
    else:  # seeds that all score the same: any change is certain
        p_value = 0.0 if delta else 1.0
    detectable = float(stats.t.ppf(1 - ALPHA / 2, dof)) * se
    return {"delta": delta, "delta_se": se, "delta_dof": dof, "p_value": p_value, "detectable": detectable}


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> List[bool]:
    """Holm's step-down correction: which of ``p_values`` stay significant at family-wise error
    ``alpha``. The k-th smallest (from 0) is tested at alpha / (m - k), stopping at the first that
    fails; nan (no test) never passes."""
    order = sorted(range(len(p_values)), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    significant = [False] * len(p_values)
    for k, i in enumerate(order):
        if not p_values[i] <= alpha / (len(p_values) - k):
            break
        significant[i] = True
    return significant


def verdict(row: dict) -> str:
    """Whether the change against the baseline stands out of seed-to-seed noise: Welch's t-test at
    95% (two-sided, each row on its own), and at least the 0.1 AP the table prints."""
    if math.isnan(row["delta"]):
        return "every seed diverged"
    if math.isnan(row["delta_se"]):
        return "one seed"
    if abs(row["delta"]) < max(row["detectable"], SMALLEST_PRINTED):
        return "within noise"
    return "helps" if row["delta"] > 0 else "hurts"


def holm_verdict(row: dict) -> str:
    """``verdict`` once the rows compared with the same baseline are corrected together (Holm): a
    change that does not survive the correction is within noise."""
    found = verdict(row)
    return found if found not in ("helps", "hurts") or row.get("holm") else "within noise"
