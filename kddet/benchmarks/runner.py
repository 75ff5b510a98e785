"""Trains benchmark runs through tools/train_net.py, several at a time, and reuses finished ones."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from filelock import FileLock

from kddet.config import load_config

from .cache import (
    cache_lock,
    finished_record,
    last_bbox_evaluation,
    per_class_ap,
    read_metrics,
    run_keys,
    run_lock,
    with_per_class,
    write_atomically,
)
from .schedule import REPO, TEACHER_CONFIG, schedule_opts

# (config, opts, out_dir, cwd, threads) -> exit status; it writes out_dir/stdout.txt and detectron2's outputs.
TrainFn = Callable[[Path, Sequence[str], Path, Path, int], int]


def train_net(config: Path, opts: Sequence[str], out_dir: Path, cwd: Path, threads: int) -> int:
    """One tools/train_net.py run in a subprocess on ``threads`` CPU threads, its output in stdout.txt."""
    command = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(config), *opts]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(out_dir / "stdout.txt", "w") as stdout:
        return subprocess.run(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT).returncode


def portable(path: Path, root: Path = REPO) -> str:
    """``path`` relative to ``root`` when inside it: records and tables name no folder of the machine
    that made them."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())  # runs start in the repository: a relative path outside it would move


def git_commit(root: Path = REPO) -> str:
    describe = ["git", "describe", "--always", "--dirty"]
    return subprocess.run(describe, cwd=root, capture_output=True, text=True).stdout.strip()


class Runner:
    """Runs training jobs and caches each finished run's result under ``cache_root``.

    Runs start in ``root`` (the repository) and are given paths relative to it where they lie inside
    it, so that their records, keys included, do not depend on where the repository is checked out.
    ``train`` runs one job (tools/train_net.py by default)."""

    def __init__(
        self,
        device: str,
        jobs: int,
        extra_opts: Sequence[str],
        retrain: bool,
        cache_root: Path,
        root: Path = REPO,
        train: Optional[TrainFn] = None,
    ):
        self.device = device
        self.cache_root = Path(cache_root)
        self.root = Path(root)
        self.extra_opts = [str(o) for o in extra_opts]
        self.retrain = retrain
        self.train = train or train_net
        self.threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        self.print_lock = threading.Lock()
        self.commit = git_commit(self.root)

    def path_opt(self, path: Path) -> str:
        return portable(path, self.root)

    def run(self, name: str, config: Path, out_dir: Path, opts: list, depends_on: str = "") -> dict:
        """Train and evaluate ``config``, or reuse its finished run; ``depends_on`` is the key of the
        run it learns from (its teacher)."""
        opts = [*map(str, opts), "MODEL.DEVICE", self.device, *self.extra_opts, "OUTPUT_DIR", self.path_opt(out_dir)]
        config = Path(config)
        with run_lock(out_dir):
            key, same_run = run_keys(config, opts, depends_on)
            if not self.retrain:
                record = self._reuse(name, out_dir, key, same_run)
                if record:
                    return record
            with cache_lock(self.cache_root):
                # detectron2 appends to metrics.json and resumes from last_checkpoint: start from nothing.
                self._set_aside(out_dir)
                out_dir.mkdir(parents=True)
            return self._train(name, config, out_dir, opts, key, same_run)

    def _reuse(self, name: str, out_dir: Path, key: str, same_run: str) -> dict:
        """The finished run with these keys, from ``out_dir`` or copied there from elsewhere in the
        cache; {} if there is none."""
        if finished_record(out_dir).get("key") == key:
            self.log(name, f"reused {out_dir / 'result.json'}")
            return with_per_class(finished_record(out_dir), out_dir)
        with cache_lock(self.cache_root):
            source = self._find_same_run(same_run)
            if source is None:
                return {}
            if source != out_dir:  # the same run in place (the folder moved) only needs its new key
                self._set_aside(out_dir)
                shutil.copytree(source, out_dir)
            record = dict(finished_record(out_dir), key=key)
            write_atomically(out_dir / "result.json", record)
        self.log(name, f"reused a copy of {source}")
        return with_per_class(record, out_dir)

    def _train(self, name: str, config: Path, out_dir: Path, opts: list, key: str, same_run: str) -> dict:
        start = time.perf_counter()
        returncode = self.train(config, opts, out_dir, self.root, self.threads)
        log_file = out_dir / "stdout.txt"
        output = log_file.read_text() if log_file.is_file() else ""
        record = {
            "key": key, "same_run": same_run, "config": portable(config), "opts": opts, "commit": self.commit,
        }  # fmt: skip
        if returncode != 0 and "FloatingPointError" in output:
            # A recipe that diverges on a seed is a result, not a failure of the table: kept and counted.
            record.update(diverged=True, minutes=(time.perf_counter() - start) / 60)
            write_atomically(out_dir / "result.json", record)
            self.log(name, "diverged (FloatingPointError), counted as such in the table")
            return record
        if returncode != 0:
            tail = "\n".join(output.splitlines()[-30:])
            raise RuntimeError(f"{name} failed (exit {returncode}), see {log_file}:\n{tail}")
        metrics = read_metrics(out_dir)
        bbox = last_bbox_evaluation(metrics)
        record.update(
            AP=bbox["AP"], AP50=bbox["AP50"], AP75=bbox["AP75"], per_class=per_class_ap(bbox),
            iters=max(m["iteration"] for m in metrics if "total_loss" in m) + 1,
            minutes=(time.perf_counter() - start) / 60,
        )  # fmt: skip
        write_atomically(out_dir / "result.json", record)
        self.log(name, f"AP {record['AP']:.1f} after {record['iters']} iterations ({record['minutes']:.1f} min)")
        return record

    def _find_same_run(self, same_run: str) -> Optional[Path]:
        """The folder of a finished run under the cache root with this ``same_run`` key, or None."""
        for record_file in self.cache_root.rglob("result.json"):
            if finished_record(record_file.parent).get("same_run") == same_run:
                return record_file.parent
        return None

    def _set_aside(self, out_dir: Path) -> None:
        """Empty ``out_dir`` for another run. A finished run there moves to superseded/ under the cache
        root, where _find_same_run still finds it (a recipe's weight changed and changed back, a
        study's variants reordered), unless superseded/ holds it already. Called with the cache lock."""
        same_run = finished_record(out_dir).get("same_run")
        if same_run:
            kept = self.cache_root / "superseded" / same_run
            if not kept.exists():
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(out_dir), str(kept))
        shutil.rmtree(out_dir, ignore_errors=True)

    def log(self, name: str, message: str) -> None:
        with self.print_lock:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def convert_missing_weights(configs: Sequence[Path]) -> None:
    """Convert the shipped ImageNet weights the configs start from (MobileNetV2's) if missing, once,
    before their runs start."""
    spec = importlib.util.spec_from_file_location("convert_pretrained", REPO / "tools/convert_pretrained.py")
    convert_pretrained = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_pretrained)
    for config in dict.fromkeys(configs):
        weights = load_config(config).MODEL.WEIGHTS
        if weights and convert_pretrained.convert_shipped_if_missing(REPO / weights, REPO):
            print(f"Converted torchvision's MobileNetV2 ImageNet weights to {weights}")


def generate_splits() -> None:
    """Generate the shapes splits once, here, rather than by the first runs at once."""
    from detectron2.data import DatasetCatalog

    for split in ("kddet_shapes_train", "kddet_shapes_val", "kddet_shapes_test"):
        DatasetCatalog.get(split)


def train_teacher(runner: Runner, teacher_dir: Path, iters: int = 0) -> dict:
    """The teacher's run (``iters``: its config's own schedule when 0), trained or reused."""
    iters = iters or load_config(TEACHER_CONFIG).SOLVER.MAX_ITER
    return runner.run("teacher", TEACHER_CONFIG, teacher_dir, schedule_opts(TEACHER_CONFIG, iters))


def evaluate_teacher(teacher: dict, teacher_dir: Path, dataset: str, device: str) -> dict:
    """The teacher's record with its AP, AP50 and AP75 on ``dataset``: its run's own evaluation if that
    was on ``dataset``, else an evaluation of its final weights there, cached beside them."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from kddet.engine import Trainer

    out_dir = str(teacher_dir / f"eval_{dataset}")
    cfg = load_config(teacher_dir / "config.yaml", ["MODEL.DEVICE", device, "OUTPUT_DIR", out_dir])
    if teacher.get("diverged") or tuple(cfg.DATASETS.TEST) == (dataset,):
        return teacher
    record_file = teacher_dir / f"eval_{dataset}.json"
    with FileLock(str(teacher_dir / f"eval_{dataset}.lock")):  # one evaluation, whoever asks at once
        cached = json.loads(record_file.read_text()) if record_file.is_file() else {}
        if cached.get("key") == teacher["key"] and "per_class" in cached:
            return dict(teacher, **cached)
        cfg.DATASETS.TEST = (dataset,)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(str(teacher_dir / "model_final.pth"))
        bbox = Trainer.test(cfg, model)["bbox"]
        evaluation = {
            "key": teacher["key"], "dataset": dataset, "AP": bbox["AP"], "AP50": bbox["AP50"], "AP75": bbox["AP75"],
            "per_class": per_class_ap(bbox),
        }  # fmt: skip
        write_atomically(record_file, evaluation)
    return dict(teacher, **evaluation)
