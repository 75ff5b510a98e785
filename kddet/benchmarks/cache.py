"""The run cache: a run's keys, its result record, and the locks that let several harness
processes (``make results`` and ``make ablations`` at once) share one cache folder.

A run's folder holds detectron2's output and ``result.json``, written last and atomically: a folder
with a record is a finished run. Each run folder has a lock held while the run is checked, trained
and recorded, so a second process asking for the same run waits and then reuses it; moves and
copies between folders (see ``Runner``) hold the cache's own lock.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from detectron2.config import get_cfg
from filelock import FileLock

from kddet.config import add_kddet_config, load_config

from .schedule import schedule_opts

RECORD = "result.json"


def _flatten(node, prefix: str = "") -> Dict[str, object]:
    items = {}
    for name, value in node.items():
        if isinstance(value, dict):
            items.update(_flatten(value, f"{prefix}{name}."))
        else:
            items[f"{prefix}{name}"] = value
    return items


def config_changes(cfg) -> str:
    """What ``cfg`` sets away from kddet's defaults, one ``KEY: value`` line each, sorted. Nodes a
    run leaves at their defaults stay out, so adding a config node (a new loss or backbone) keeps
    every cached run; a changed default is a change of code, which needs --retrain like any other."""
    defaults = get_cfg()
    add_kddet_config(defaults)
    defaults = _flatten(defaults)
    changed = {key: value for key, value in _flatten(cfg).items() if key not in defaults or defaults[key] != value}
    return "".join(f"{key}: {value!r}\n" for key, value in sorted(changed.items()))


def run_keys(config: Path, opts: Sequence[str], depends_on: str = "") -> Tuple[str, str]:
    """The cache keys of a run. ``key`` changes with anything that changes the run: the settings its
    resolved config (base files and options included) changes from the defaults, and the key of the
    run it learns from (its teacher). ``same_run`` leaves the output folder out, so that a run another
    table made (an ablation's, a results table's) is copied, not repeated."""
    resolved = load_config(config, opts)
    key = hashlib.sha1((config_changes(resolved) + depends_on).encode()).hexdigest()
    resolved.OUTPUT_DIR = ""
    return key, hashlib.sha1((config_changes(resolved) + depends_on).encode()).hexdigest()


def student_settings(config: Path, iters: int, extra_opts: Sequence[str] = ()) -> str:
    """A fingerprint of what a student of ``config`` trains for ``iters`` iterations, whatever its
    seed, device and output folder: a tool that quotes a table's seed spread for a run of its own
    (the demo) quotes it only when the two fingerprints match."""
    opts = [*map(str, schedule_opts(config, iters)), *map(str, extra_opts), "SEED", "0", "MODEL.DEVICE", "cpu"]
    return run_keys(config, opts)[1]


def finished_record(run_dir: Path) -> dict:
    """The result record of a finished run in ``run_dir`` (one with its final weights, or one that
    diverged), else {}."""
    record_file = run_dir / RECORD
    if not record_file.is_file():
        return {}
    record = json.loads(record_file.read_text())
    return record if record.get("diverged") or (run_dir / "model_final.pth").is_file() else {}


def write_atomically(path: Path, record: dict) -> None:
    """Write ``record`` as JSON to ``path``: whole or not at all, whoever reads it meanwhile."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # one per process: no two writers share it
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)


def run_lock(run_dir: Path) -> FileLock:
    """The lock of one run folder (a file beside it, so that moving the folder keeps it)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(run_dir.parent / f"{run_dir.name}.lock"))


def cache_lock(cache_root: Path) -> FileLock:
    """The lock of the cache as a whole, held while runs move or are copied between folders."""
    cache_root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache_root / "cache.lock"))


def per_class_ap(bbox: dict) -> Dict[str, float]:
    """The per-class APs of a COCO evaluation's bbox results (keys "AP-<class>"), by class."""
    return {k[len("AP-") :]: v for k, v in bbox.items() if k.startswith("AP-")}


def last_bbox_evaluation(metrics: List[dict]) -> Dict[str, float]:
    """The bbox results of the last evaluation in a run's metrics.json rows, without the "bbox/" prefix."""
    final = next(m for m in reversed(metrics) if "bbox/AP" in m)
    return {k[len("bbox/") :]: v for k, v in final.items() if k.startswith("bbox/")}


def read_metrics(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.json").read_text().splitlines()]


def with_per_class(record: dict, run_dir: Path) -> dict:
    """``record`` with the per-class APs of its run's last evaluation (records written before the
    tables had them are completed from the run's metrics.json, where they are kept)."""
    if "per_class" in record or record.get("diverged") or not (run_dir / "metrics.json").is_file():
        return record
    record = dict(record, per_class=per_class_ap(last_bbox_evaluation(read_metrics(run_dir))))
    write_atomically(run_dir / RECORD, record)
    return record
