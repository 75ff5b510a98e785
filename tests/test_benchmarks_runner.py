"""kddet.benchmarks.cache and .runner: cache keys, reuse of finished runs, the lock that lets two
harnesses share one cache, repository-relative records, and the teacher's evaluation. Runs are
trained by a fake function that writes what tools/train_net.py writes."""

import json
import shutil
import threading
import time

import pytest
from detectron2.data import DatasetCatalog

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config

import kddet.benchmarks.cache as cache
import kddet.config
from kddet.benchmarks.runner import Runner, evaluate_teacher


class FakeTrain:
    """Writes a finished run's files (metrics.json, model_final.pth, stdout.txt), ``seconds`` long."""

    def __init__(self, ap=25.0, seconds=0.0, diverge=False):
        self.ap, self.seconds, self.diverge, self.calls = ap, seconds, diverge, []

    def __call__(self, config, opts, out_dir, cwd, threads):
        self.calls.append(out_dir)
        time.sleep(self.seconds)
        if self.diverge:
            (out_dir / "stdout.txt").write_text("FloatingPointError: Loss became infinite or NaN")
            return 1
        evaluation = {"iteration": 9, "bbox/AP": self.ap, "bbox/AP50": 50.0, "bbox/AP75": 20.0, "bbox/AP-bar": 7.0}
        (out_dir / "metrics.json").write_text(
            json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n" + json.dumps(evaluation)
        )
        (out_dir / "model_final.pth").write_bytes(b"weights")
        (out_dir / "stdout.txt").write_text("done")
        return 0


def runner(tmp_path, train=None):
    return Runner(
        "cpu", 1, [], retrain=False, cache_root=tmp_path / "output", root=tmp_path, train=train or FakeTrain()
    )


def finished(folder, same_run, ap, weights=b"weights"):
    folder.mkdir(parents=True)
    (folder / "model_final.pth").write_bytes(weights)
    (folder / "result.json").write_text(json.dumps({"key": "old", "same_run": same_run, "AP": ap}))


def test_a_run_is_trained_once_then_reused_and_records_paths_relative_to_the_repository(tmp_path):
    train = FakeTrain(ap=31.5)
    here = tmp_path / "output/full/student/seed1"
    record = runner(tmp_path, train).run("student seed 1", STUDENT_CONFIG, here, ["SEED", 1])
    assert record["AP"] == 31.5 and record["iters"] == 10 and record["per_class"] == {"bar": 7.0}
    assert record["config"] == "configs/shapes/student_slim_r8.yaml"
    assert record["opts"][-2:] == ["OUTPUT_DIR", "output/full/student/seed1"]
    assert str(tmp_path) not in (here / "result.json").read_text()  # no folder of this machine
    assert runner(tmp_path, train).run("student seed 1", STUDENT_CONFIG, here, ["SEED", 1]) == record
    assert train.calls == [here]
    retrained = Runner("cpu", 1, [], retrain=True, cache_root=tmp_path / "output", root=tmp_path, train=train)
    retrained.run("student seed 1", STUDENT_CONFIG, here, ["SEED", 1])
    assert len(train.calls) == 2


def test_a_diverged_run_is_a_result_and_a_failed_one_an_error(tmp_path):
    record = runner(tmp_path, FakeTrain(diverge=True)).run("kd", STUDENT_CONFIG, tmp_path / "output/kd", ["SEED", 1])
    assert record["diverged"] and cache.finished_record(tmp_path / "output/kd")["diverged"]

    def fails(config, opts, out_dir, cwd, threads):
        (out_dir / "stdout.txt").write_text("KeyError: 'Non-existent config key'")
        return 1

    with pytest.raises(RuntimeError, match="Non-existent config key"):
        runner(tmp_path, fails).run("bad", STUDENT_CONFIG, tmp_path / "output/bad", ["SEED", 2])


def test_two_harnesses_asking_for_the_same_run_at_once_train_it_once_and_leave_a_valid_record(tmp_path):
    train = FakeTrain(ap=12.0, seconds=1.0)
    here = tmp_path / "output/full/student/seed3"
    records = [None, None]

    def harness(i):  # each its own Runner, as two processes would have
        records[i] = runner(tmp_path, train).run(f"harness {i}", STUDENT_CONFIG, here, ["SEED", 3])

    threads = [threading.Thread(target=harness, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(train.calls) == 1  # the second waited, then reused the first's run
    assert records[0] == records[1] == cache.finished_record(here)
    assert json.loads((here / "result.json").read_text())["AP"] == 12.0
    assert not list(here.glob("*.partial"))


def test_a_finished_run_made_elsewhere_with_the_same_config_is_copied_not_retrained(tmp_path):
    train = FakeTrain()
    opts = ["SEED", 4, "MODEL.DEVICE", "cpu"]
    elsewhere, here = tmp_path / "output/ablation/fitnet/3/seed4", tmp_path / "output/full/student/seed4"
    _, same_run = cache.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", "output/ablation/fitnet/3/seed4"], "teacher-key")
    finished(elsewhere, same_run, 12.5)

    record = runner(tmp_path, train).run("student seed 4", STUDENT_CONFIG, here, ["SEED", 4], depends_on="teacher-key")
    key, _ = cache.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", "output/full/student/seed4"], "teacher-key")
    assert record["AP"] == 12.5 and record["key"] == key and not train.calls
    assert (here / "model_final.pth").read_bytes() == b"weights"
    assert json.loads((here / "result.json").read_text())["key"] == key
    # Another teacher is another run: nothing to copy.
    _, other = cache.run_keys(STUDENT_CONFIG, [*opts, "OUTPUT_DIR", "output/full/student/seed4"], "other-teacher")
    assert other != same_run

    # A run whose folder moved (its key names the old OUTPUT_DIR) is kept where it is, with its new key.
    shutil.rmtree(elsewhere)  # so that the only match is the run's own folder
    moved = tmp_path / "output/moved/student/seed4"
    shutil.move(str(here), str(moved))
    record = runner(tmp_path, train).run("student seed 4", STUDENT_CONFIG, moved, ["SEED", 4], depends_on="teacher-key")
    assert record["AP"] == 12.5 and (moved / "model_final.pth").read_bytes() == b"weights" and not train.calls


def test_a_finished_run_replaced_in_its_folder_stays_in_the_cache(tmp_path):
    def same_run(folder, seed):
        return cache.run_keys(STUDENT_CONFIG, ["SEED", seed, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", folder])[1]

    # The folder of variant 0 holds seed 1's run; variant 0 becomes seed 2, whose run is elsewhere.
    folder, elsewhere = tmp_path / "output/ablation/study/0/seed1", tmp_path / "output/full/student/seed2"
    finished(folder, same_run("x", 1), 11.0, b"weights 1")
    finished(elsewhere, same_run("y", 2), 22.0, b"weights 2")
    assert runner(tmp_path).run("seed 2", STUDENT_CONFIG, folder, ["SEED", 2])["AP"] == 22.0
    assert (folder / "model_final.pth").read_bytes() == b"weights 2"
    # Seed 1's run was not lost: asked for again, anywhere, it is copied, not retrained.
    other = tmp_path / "output/ablation/study/1/seed1"
    record = runner(tmp_path).run("seed 1", STUDENT_CONFIG, other, ["SEED", 1])
    assert record["AP"] == 11.0 and (other / "model_final.pth").read_bytes() == b"weights 1"
    assert len(list((tmp_path / "output/superseded").iterdir())) == 1


def test_cache_keys_follow_the_settings_a_run_changes_not_new_default_nodes(monkeypatch):
    fitnet = REPO / "configs/shapes/fitnet.yaml"
    opts = ["SEED", 3, "OUTPUT_DIR", "out"]
    changes = cache.config_changes(load_config(fitnet, *opts))
    assert "SEED: 3\n" in changes and "KD.LOSSES: ['FitNet']\n" in changes
    assert "KD.FGFI." not in changes and "MODEL.RPN.NMS_THRESH" not in changes  # left at their defaults
    key = cache.run_keys(fitnet, opts)
    assert cache.run_keys(fitnet, ["SEED", 4, "OUTPUT_DIR", "out"]) != key
    assert cache.run_keys(fitnet, [*opts, "KD.FITNET.WEIGHT", 0.5]) != key

    # A node kddet adds later (a new loss, a new backbone) at its default leaves cached runs valid.
    add_kddet_config = cache.add_kddet_config

    def with_a_new_node(cfg):
        add_kddet_config(cfg)
        cfg.KD.SOME_NEW_LOSS = cache.get_cfg().__class__({"WEIGHT": 1.0})

    monkeypatch.setattr(cache, "add_kddet_config", with_a_new_node)
    monkeypatch.setattr(kddet.config, "add_kddet_config", with_a_new_node)  # what load_config adds
    assert cache.run_keys(fitnet, opts) == key


def test_records_written_before_the_per_class_figures_get_them_from_their_metrics(tmp_path):
    evaluation = {"iteration": 9, "bbox/AP": 21.0, "bbox/AP-disk": 33.0, "bbox/AP-bar": 7.0}
    (tmp_path / "metrics.json").write_text(
        json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n" + json.dumps(evaluation)
    )
    backfilled = cache.with_per_class({"AP": 21.0}, tmp_path)
    assert backfilled["per_class"] == {"disk": 33.0, "bar": 7.0}
    assert json.loads((tmp_path / "result.json").read_text())["per_class"] == {"disk": 33.0, "bar": 7.0}


def test_the_teacher_is_evaluated_on_the_benchmarks_test_set_once_per_teacher(
    tmp_path, datasets_root, teacher_weights, monkeypatch
):
    from detectron2.data import MetadataCatalog

    head = DatasetCatalog.get("kddet_shapes_val")[:6]
    if "kddet_shapes_val_head" not in DatasetCatalog.list():
        DatasetCatalog.register("kddet_shapes_val_head", lambda: head)
        metadata = MetadataCatalog.get("kddet_shapes_val").as_dict()
        MetadataCatalog.get("kddet_shapes_val_head").set(**{k: v for k, v in metadata.items() if k != "name"})
    # An untrained teacher scores every box low: a negative threshold keeps its AP a number.
    cfg = load_config(TEACHER_CONFIG, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", -1.0)
    (tmp_path / "config.yaml").write_text(cfg.dump())
    shutil.copy(teacher_weights, tmp_path / "model_final.pth")
    record = {"key": "k1", "AP": 99.0, "AP50": 99.0, "AP75": 99.0, "minutes": 3.0}

    # Its own test set: the run's evaluation stands.
    assert evaluate_teacher(record, tmp_path, "kddet_shapes_val", "cpu") == record
    evaluated = evaluate_teacher(record, tmp_path, "kddet_shapes_val_head", "cpu")
    assert evaluated["dataset"] == "kddet_shapes_val_head" and evaluated["minutes"] == 3.0
    assert 0.0 <= evaluated["AP"] <= 100.0 and evaluated["AP"] != 99.0
    assert json.loads((tmp_path / "eval_kddet_shapes_val_head.json").read_text())["key"] == "k1"

    def no_model(cfg):
        raise AssertionError("evaluated again")

    monkeypatch.setattr("detectron2.modeling.build_model", no_model)
    assert evaluate_teacher(record, tmp_path, "kddet_shapes_val_head", "cpu") == evaluated  # cached
    with pytest.raises(AssertionError, match="evaluated again"):  # another teacher: evaluated anew
        evaluate_teacher(dict(record, key="k2"), tmp_path, "kddet_shapes_val_head", "cpu")
