"""How long a benchmark run trains: a share of its config's schedule, with its warm-ups kept."""

from pathlib import Path
from typing import Tuple

from kddet.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs/shapes"
TEACHER_CONFIG = CONFIGS / "teacher_slim_r18.yaml"
STUDENT_CONFIG = CONFIGS / "student_slim_r8.yaml"

# The (teacher, students) fractions of their configs' own schedules. Every student of a table learns
# from the same teacher. "demo" is what tools/demo.py trains: the same students from a teacher of a
# sixth of its schedule, so that all three fit in ten minutes on a 2-core CPU.
SCHEDULES = {"full": (1.0, 1.0), "cpu-short": (1.0, 1 / 2), "demo": (1 / 6, 1.0)}


def schedule_iters(schedule: str) -> Tuple[int, int]:
    """The teacher's and the students' iterations in ``schedule`` (a key of SCHEDULES)."""
    teacher_share, student_share = SCHEDULES[schedule]
    return (
        round(load_config(TEACHER_CONFIG).SOLVER.MAX_ITER * teacher_share),
        round(load_config(STUDENT_CONFIG).SOLVER.MAX_ITER * student_share),
    )


def schedule_opts(config: Path, iters: int) -> list:
    """Options that train ``config`` for ``iters`` iterations: its LR steps scale with the schedule,
    its warm-ups (the LR's, and a loss's ``WARMUP_ITERS`` such as FGFI's) do not, since a student is
    as fragile in its first steps however long it then trains (at half length KD and the virtual
    teacher diverge); they are capped at half the schedule."""
    cfg = load_config(config)
    scale = iters / cfg.SOLVER.MAX_ITER
    # fvcore wants increasing milestones in [1, iters): on very short schedules steps merge.
    steps = tuple(sorted({min(max(1, round(s * scale)), iters - 1) for s in cfg.SOLVER.STEPS} - {0}))
    opts = [
        "SOLVER.MAX_ITER", iters,
        "SOLVER.STEPS", steps,
        "SOLVER.WARMUP_ITERS", min(cfg.SOLVER.WARMUP_ITERS, iters // 2),
    ]  # fmt: skip
    for loss in cfg.KD.LOSSES:
        node = cfg.KD[loss.upper()]
        if "WARMUP_ITERS" in node:
            opts += [f"KD.{loss.upper()}.WARMUP_ITERS", min(node.WARMUP_ITERS, iters // 2)]
    return opts
