"""tools/make_results.py: the statistics of its table against direct computations, the schedule it
derives, and one tiny end-to-end run that writes the table and chart and is then reused."""
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from detectron2.data import DatasetCatalog

from conftest import REPO, STUDENT_CONFIG, load_config
import kddet.config

spec = importlib.util.spec_from_file_location("make_results", REPO / "tools/make_results.py")
make_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_results)


def record(ap, ap50=50.0, ap75=20.0, minutes=1.0, iters=300):
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "minutes": minutes, "iters": iters}


def test_summary_means_deltas_and_gap_fraction_match_a_direct_computation():
    teacher = record(40.0)
    runs = {
        "student": [record(19.0), record(20.0), record(21.0)],
        "fitnet": [record(22.0, ap50=40.0), record(24.0, ap50=44.0), record(23.0, ap50=42.0)],
    }
    student, fitnet = make_results.summarize(teacher, runs)
    assert student["name"] == "student" and fitnet["name"] == "fitnet"
    assert fitnet["AP"] == pytest.approx(23.0) and fitnet["AP50"] == pytest.approx(42.0)
    assert fitnet["AP_std"] == pytest.approx(1.0) and fitnet["AP50_std"] == pytest.approx(2.0)  # sample std
    assert fitnet["delta"] == pytest.approx(3.0)
    assert fitnet["delta_se"] == pytest.approx(math.sqrt(1 / 3 + 1 / 3))
    # Welch-Satterthwaite: (1/3 + 1/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4
    assert fitnet["delta_dof"] == pytest.approx(4.0)
    assert fitnet["gap_recovered"] == pytest.approx(3.0 / 20.0)
    assert student["delta"] == pytest.approx(0.0)
    slow = make_results.summarize(teacher, {"student": [record(20.0, minutes=m) for m in (2.0, 2.5, 34.0)]})[0]
    assert slow["minutes"] == pytest.approx(2.5)  # the median: one run slowed by other work does not count


def test_per_class_ap_is_averaged_over_seeds_and_tabled_per_model(tmp_path):
    teacher = dict(record(40.0), per_class={"disk": 50.0, "bar": 30.0})
    runs = {
        "student": [dict(record(20.0), per_class={"disk": 30.0, "bar": 10.0}), dict(record(22.0), per_class={"disk": 32.0, "bar": 14.0})],
        "fitnet": [dict(record(21.0), per_class={"disk": 31.0, "bar": 5.0})],
    }
    student, fitnet = make_results.summarize(teacher, runs)
    assert student["per_class"]["bar"] == pytest.approx((12.0, statistics.stdev([10.0, 14.0])))
    lines = make_results.format_per_class(teacher, [dict(student, name="student alone"), fitnet])
    assert "| model | disk | bar |" in lines
    assert "| teacher | 50.0 | 30.0 |" in lines
    assert "| student alone | 31.0 ± 1.4 | 12.0 ± 2.8 |" in lines
    assert "| fitnet | 31.0 | 5.0 |" in lines
    # Records written before the table had per-class figures get them from their run's metrics.json.
    (tmp_path / "metrics.json").write_text(
        json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n" + json.dumps({"iteration": 9, "bbox/AP": 21.0, "bbox/AP-disk": 33.0, "bbox/AP-bar": 7.0}) + "\n"
    )
    backfilled = make_results._with_per_class(record(21.0), tmp_path)
    assert backfilled["per_class"] == {"disk": 33.0, "bar": 7.0}
    assert json.loads((tmp_path / "result.json").read_text())["per_class"] == {"disk": 33.0, "bar": 7.0}
    # A study of the student alone evaluates no teacher: its rows still get their table, without a teacher row.
    alone = make_results.format_per_class({"AP": math.nan}, [dict(student, name="student alone"), fitnet])
    assert "| model | disk | bar |" in alone and "| fitnet | 31.0 | 5.0 |" in alone
    assert not any(line.startswith("| teacher") for line in alone)
    assert make_results.format_per_class(teacher, [student, record(21.0)]) == []  # a row without them


def test_verdict_is_a_welch_t_test_at_95_percent_with_a_printable_change():
    base = {"delta_se": 0.5, "delta_dof": 4.0}  # t(4) = 2.78: the threshold is 1.39 AP
    assert make_results.verdict({**base, "delta": 1.5}) == "helps"
    assert make_results.verdict({**base, "delta": -1.5}) == "hurts"
    assert make_results.verdict({**base, "delta": 1.2}) == "within noise"  # beyond 2 SE, not beyond t(4) SE
    assert make_results.verdict({"delta_se": 0.0, "delta_dof": math.inf, "delta": -1e-6}) == "within noise"
    assert make_results.verdict({"delta_se": math.nan, "delta_dof": math.inf, "delta": 5.0}) == "one seed"


def test_detectable_change_is_the_threshold_of_the_verdict():
    row = {"delta_se": 0.5, "delta_dof": 4.0}
    assert make_results.detectable_change(row) == pytest.approx(2.78 * 0.5)
    assert make_results.verdict({**row, "delta": 2.78 * 0.5 + 1e-6}) == "helps"
    assert make_results.verdict({**row, "delta": 2.78 * 0.5 - 1e-6}) == "within noise"


def test_the_student_gets_ten_seeds_baselines_and_card_methods_five_the_rest_three():
    assert make_results.seeds_of("student") == make_results.seeds_of("mobilenet_v2/student") == list(range(1, 11))
    assert make_results.seeds_of("student", [1, 2]) == [1, 2]
    assert make_results.seeds_of("fitnet") == [1, 2, 3, 4, 5]
    assert make_results.seeds_of("virtual_teacher") == make_results.seeds_of("chen2017") == [1, 2, 3, 4, 5]
    assert make_results.seeds_of("pkt") == [1, 2, 3]
    assert make_results.seeds_of("pkt", [7, 7, 8]) == [7, 8]
    recipes = {name for benchmark in make_results.BENCHMARKS for name in make_results.all_recipes(benchmark)}
    assert set(make_results.FIVE_SEED_MODELS) <= recipes
    assert make_results.seeds_of("mobilenet_v2/combined_tuned") == [1, 2, 3, 4, 5]


def test_t_critical_values_round_the_degrees_of_freedom_down():
    assert make_results.t_critical(4.0) == 2.78
    assert make_results.t_critical(4.9) == 2.78  # never the more lenient t(5)
    assert make_results.t_critical(11.0) == 2.23
    assert make_results.t_critical(0.5) == 12.71
    assert make_results.t_critical(math.inf) == 1.96


def test_single_seed_has_no_std_and_a_zero_gap_has_no_fraction():
    student, kd = make_results.summarize(record(10.0), {"student": [record(10.0)], "kd": [record(11.0)]})
    assert math.isnan(kd["AP_std"]) and math.isnan(kd["delta_se"])
    assert math.isnan(kd["gap_recovered"])  # teacher no better than the student: no gap to recover


def test_schedule_scales_steps_but_not_warmup_and_keeps_milestones_below_the_end():
    solver = make_results.load_config(STUDENT_CONFIG).SOLVER
    opts = dict(zip(*[iter(make_results.schedule_opts(STUDENT_CONFIG, solver.MAX_ITER // 3))] * 2))
    assert opts["SOLVER.MAX_ITER"] == solver.MAX_ITER // 3
    assert opts["SOLVER.STEPS"] == tuple(round(s / 3) for s in solver.STEPS)
    assert opts["SOLVER.WARMUP_ITERS"] == solver.WARMUP_ITERS  # a short schedule is no less fragile at first
    tiny = dict(zip(*[iter(make_results.schedule_opts(STUDENT_CONFIG, 3))] * 2))
    assert all(1 <= s < 3 for s in tiny["SOLVER.STEPS"]) and list(tiny["SOLVER.STEPS"]) == sorted(set(tiny["SOLVER.STEPS"]))
    assert tiny["SOLVER.WARMUP_ITERS"] == 1  # capped at half the schedule
    assert dict(zip(*[iter(make_results.schedule_opts(STUDENT_CONFIG, 1))] * 2))["SOLVER.STEPS"] == ()


def test_schedule_keeps_the_warmup_of_a_loss_but_caps_it_at_half():
    fgfi = REPO / "configs/shapes/fgfi.yaml"
    warmup = make_results.load_config(fgfi).KD.FGFI.WARMUP_ITERS
    assert dict(zip(*[iter(make_results.schedule_opts(fgfi, 4 * warmup))] * 2))["KD.FGFI.WARMUP_ITERS"] == warmup
    assert dict(zip(*[iter(make_results.schedule_opts(fgfi, warmup))] * 2))["KD.FGFI.WARMUP_ITERS"] == warmup // 2


def test_a_finished_run_made_elsewhere_with_the_same_config_is_copied_not_retrained(tmp_path):
    runner = make_results.Runner("cpu", 1, [], retrain=False, cache_root=tmp_path)
    opts = ["SEED", 4, "MODEL.DEVICE", "cpu"]
    elsewhere, here = tmp_path / "ablation/fitnet/3/seed4", tmp_path / "full/student/seed4"
    _, same_run = make_results.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", str(elsewhere)], "teacher-key")
    elsewhere.mkdir(parents=True)
    (elsewhere / "model_final.pth").write_bytes(b"weights")
    (elsewhere / "result.json").write_text(json.dumps({"key": "old", "same_run": same_run, "AP": 12.5}))

    record = runner.run("student seed 4", STUDENT_CONFIG, here, ["SEED", 4], depends_on="teacher-key")
    key, _ = make_results.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", str(here)], "teacher-key")
    assert record["AP"] == 12.5 and record["key"] == key
    assert (here / "model_final.pth").read_bytes() == b"weights"
    assert json.loads((here / "result.json").read_text())["key"] == key
    # Another teacher is another run: nothing to copy, so it would train (and here fails fast).
    _, other = make_results.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", str(here)], "other-teacher")
    assert other != same_run

    # A run whose folder moved (its key names the old OUTPUT_DIR) is kept where it is, with its new key.
    shutil.rmtree(elsewhere)  # so that the only match is the run's own folder
    moved = tmp_path / "moved/student/seed4"
    shutil.move(str(here), str(moved))
    record = runner.run("student seed 4", STUDENT_CONFIG, moved, ["SEED", 4], depends_on="teacher-key")
    assert record["AP"] == 12.5 and (moved / "model_final.pth").read_bytes() == b"weights"


def test_a_finished_run_replaced_in_its_folder_stays_in_the_cache(tmp_path):
    runner = make_results.Runner("cpu", 1, [], retrain=False, cache_root=tmp_path)
    opts = ["MODEL.DEVICE", "cpu"]

    def finished(folder, seed, ap):
        _, same_run = make_results.run_keys(STUDENT_CONFIG, ["SEED", seed, *opts, "OUTPUT_DIR", str(folder)])
        folder.mkdir(parents=True)
        (folder / "model_final.pth").write_bytes(b"weights %d" % seed)
        (folder / "result.json").write_text(json.dumps({"key": "old", "same_run": same_run, "AP": ap}))

    # The folder of variant 0 holds seed 1's run; variant 0 becomes seed 2, whose run is elsewhere.
    folder, elsewhere = tmp_path / "ablation/study/0/seed1", tmp_path / "full/student/seed2"
    finished(folder, 1, 11.0)
    finished(elsewhere, 2, 22.0)
    assert runner.run("seed 2", STUDENT_CONFIG, folder, ["SEED", 2])["AP"] == 22.0
    assert (folder / "model_final.pth").read_bytes() == b"weights 2"
    # Seed 1's run was not lost: asked for again, anywhere, it is copied, not retrained.
    record = runner.run("seed 1", STUDENT_CONFIG, tmp_path / "ablation/study/1/seed1", ["SEED", 1])
    assert record["AP"] == 11.0 and (tmp_path / "ablation/study/1/seed1/model_final.pth").read_bytes() == b"weights 1"
    assert len(list((tmp_path / "superseded").iterdir())) == 1


def test_cache_keys_follow_the_settings_a_run_changes_not_new_default_nodes(monkeypatch):
    fitnet = REPO / "configs/shapes/fitnet.yaml"
    opts = ["SEED", 3, "OUTPUT_DIR", "out"]
    changes = make_results.config_changes(make_results.load_config(fitnet, opts))
    assert "SEED: 3\n" in changes and "KD.LOSSES: ['FitNet']\n" in changes
    assert "KD.FGFI." not in changes and "MODEL.RPN.NMS_THRESH" not in changes  # left at their defaults
    key = make_results.run_keys(fitnet, opts)
    assert make_results.run_keys(fitnet, ["SEED", 4, "OUTPUT_DIR", "out"]) != key
    assert make_results.run_keys(fitnet, [*opts, "KD.FITNET.WEIGHT", 0.5]) != key

    # A node kddet adds later (a new loss, a new backbone) at its default leaves cached runs valid.
    add_kddet_config = make_results.add_kddet_config

    def with_a_new_node(cfg):
        add_kddet_config(cfg)
        cfg.KD.SOME_NEW_LOSS = make_results.get_cfg().__class__({"WEIGHT": 1.0})

    monkeypatch.setattr(make_results, "add_kddet_config", with_a_new_node)
    monkeypatch.setattr(kddet.config, "add_kddet_config", with_a_new_node)  # what load_config adds
    assert make_results.run_keys(fitnet, opts) == key


def test_every_recipe_config_is_in_the_table():
    recipes = make_results.all_recipes()
    assert "fitnet" in recipes and "chen2017" in recipes
    assert not {"teacher_slim_r18", "student_slim_r8", "Base-Shapes", "Base-Distill"} & set(recipes)


def test_the_pretrained_benchmark_distils_its_mobilenet_v2_student_as_the_scratch_recipes_do():
    recipes = make_results.all_recipes("pretrained")
    assert {"fitnet", "fgfi", "nst", "chen2017", "combined", "virtual_teacher", "pkd", "fgfi_standardised"} <= set(recipes)
    assert not {"student", "Base-Distill"} & set(recipes)
    student = load_config(make_results.BENCHMARKS["pretrained"].student)
    assert student.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone" and student.MODEL.WEIGHTS
    assert student.DATASETS.TEST == ("kddet_shapes_test",)
    # Every recipe but the two made on this benchmark has a scratch namesake it copies, three of them
    # with one weight tuned on this benchmark (tools/ablate.py card_pretrained, hints_clip_pretrained).
    made_here = {"combined_tuned", "fgfi_standardised"}
    assert set(recipes) - set(make_results.all_recipes("scratch")) == made_here
    tuned = {"nst": ("NST", 100.0), "chen2017": ("FITNET", 0.02), "pkd": ("PKD", 5.0)}
    standardised = load_config(make_results.recipe_config("pretrained", "fgfi_standardised")).KD
    fgfi = load_config(make_results.recipe_config("pretrained", "fgfi")).KD
    assert standardised.FGFI.STANDARDIZE_TARGET and standardised.FGFI.STANDARDIZE_STUDENT
    fgfi.FGFI.update(WEIGHT=0.05, STANDARDIZE_TARGET=True, STANDARDIZE_STUDENT=True)
    assert standardised == fgfi  # FGFI's recipe but for the standardisation and its lambda
    for name in recipes:
        pretrained = load_config(make_results.recipe_config("pretrained", name))
        if name not in made_here:
            scratch = load_config(make_results.recipe_config("scratch", name))
            if name in tuned:
                node, weight = tuned[name]
                assert pretrained.KD[node].WEIGHT == weight != scratch.KD[node].WEIGHT
                scratch.KD[node].WEIGHT = weight
            assert pretrained.KD == scratch.KD, name  # losses, weights and teacher: only the student differs
        assert pretrained.MODEL.BACKBONE == student.MODEL.BACKBONE and pretrained.DATASETS == student.DATASETS
        assert make_results.run_folder("pretrained", name) == f"mobilenet_v2/{name}"
        assert make_results.seeds_of(make_results.run_folder("pretrained", name)) == make_results.seeds_of(name)
    assert make_results.run_folder("scratch", "student") == "student"


def test_the_teacher_is_evaluated_on_the_benchmarks_test_set_once_per_teacher(tmp_path, datasets_root, teacher_weights, monkeypatch):
    from detectron2.data import MetadataCatalog

    head = DatasetCatalog.get("kddet_shapes_val")[:6]
    if "kddet_shapes_val_head" not in DatasetCatalog.list():
        DatasetCatalog.register("kddet_shapes_val_head", lambda: head)
        MetadataCatalog.get("kddet_shapes_val_head").set(**{k: v for k, v in MetadataCatalog.get("kddet_shapes_val").as_dict().items() if k != "name"})
    # An untrained teacher scores every box low: a negative threshold keeps its AP a number.
    cfg = load_config(make_results.TEACHER_CONFIG, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0)
    (tmp_path / "config.yaml").write_text(cfg.dump())
    shutil.copy(teacher_weights, tmp_path / "model_final.pth")
    record = {"key": "k1", "AP": 99.0, "AP50": 99.0, "AP75": 99.0, "minutes": 3.0}

    # Its own test set: the run's evaluation stands.
    assert make_results.evaluate_teacher(record, tmp_path, "kddet_shapes_val", "cpu") == record
    evaluated = make_results.evaluate_teacher(record, tmp_path, "kddet_shapes_val_head", "cpu")
    assert evaluated["dataset"] == "kddet_shapes_val_head" and evaluated["minutes"] == 3.0
    assert 0.0 <= evaluated["AP"] <= 100.0 and evaluated["AP"] != 99.0
    assert json.loads((tmp_path / "eval_kddet_shapes_val_head.json").read_text())["key"] == "k1"

    def no_model(cfg):
        raise AssertionError("evaluated again")

    monkeypatch.setattr("detectron2.modeling.build_model", no_model)
    assert make_results.evaluate_teacher(record, tmp_path, "kddet_shapes_val_head", "cpu") == evaluated  # cached
    with pytest.raises(AssertionError, match="evaluated again"):  # another teacher: evaluated anew
        make_results.evaluate_teacher(dict(record, key="k2"), tmp_path, "kddet_shapes_val_head", "cpu")


@pytest.mark.slow
def test_tiny_run_writes_table_and_chart_then_reuses_its_runs(tmp_path, datasets_root):
    for split in ("kddet_shapes_train", "kddet_shapes_val"):
        DatasetCatalog.get(split)  # generated here, not by two runs at once
    command = [
        sys.executable, str(REPO / "tools/make_results.py"), "--benchmark", "scratch", "--student-iters", "2", "--teacher-iters", "2",
        "--seeds", "1", "2", "--recipes", "fitnet", "--output", str(tmp_path / "runs"),
        "--results-dir", str(tmp_path / "results"),
        # Two-iteration models score every box low, some at 0: a negative threshold keeps AP a number, not nan.
        "SOLVER.IMS_PER_BATCH", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "-1.0",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    table = (tmp_path / "results/embedded_scratch_custom.md").read_text()
    assert (tmp_path / "results/embedded_scratch_custom.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fitnet_ap = [json.loads((tmp_path / f"runs/custom/fitnet/seed{s}/result.json").read_text())["AP"] for s in (1, 2)]
    row = re.search(r"^\| fitnet \| 2 \| ([\d.]+) ± ([\d.]+) \|", table, re.M)
    assert row, table
    assert float(row.group(1)) == pytest.approx(statistics.fmean(fitnet_ap), abs=0.051)
    assert float(row.group(2)) == pytest.approx(statistics.stdev(fitnet_ap), abs=0.051)
    assert re.search(r"^\| teacher \| ", table, re.M) and re.search(r"^\| student alone \| ", table, re.M)
    assert "GFLOPs" in table and "embedded_scratch_custom.png" in table
    from kddet.data.shapes import SHAPE_CLASSES as classes
    header = re.search(r"^\| model \| (.*) \|$", table.split("AP per class")[1], re.M)
    assert header and sorted(header.group(1).split(" | ")) == sorted(classes), table
    assert re.search(r"^\| fitnet( \| [^|]+){6} \|$", table.split("AP per class")[1], re.M), table

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused") == 5  # teacher, 2 student seeds, 2 fitnet seeds: nothing retrained


def test_a_diverged_seed_is_counted_not_averaged():
    teacher = record(40.0)
    runs = {
        "student": [record(19.0), record(20.0), record(21.0)],
        "kd": [record(22.0), {"diverged": True, "minutes": 0.5}, record(24.0)],
        "sp": [{"diverged": True, "minutes": 0.5}],
    }
    _, kd, sp = make_results.summarize(teacher, runs)
    assert (kd["seeds"], kd["diverged"]) == (2, 1) and kd["AP"] == pytest.approx(23.0)
    assert math.isnan(sp["AP"]) and make_results.verdict(sp) == "every seed diverged"
    sizes = {"teacher": (7.0, 1.3), "student": (1.4, 0.3)}
    setting = {"benchmark": "scratch", "dataset": "kddet_shapes_val", "images": 200, "schedule": "full", "device": "cpu",
               "jobs": 2, "argv": [], "commit": "abc"}
    table = make_results.format_markdown(teacher, make_results.summarize(teacher, runs), sizes, setting, "x.png")
    assert "| kd | 2 + 1 diverged | 23.0 ± 1.4 |" in table
    assert "| sp | 0 + 1 diverged | nan |" in table and "every seed diverged" in table
