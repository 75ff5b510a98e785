"""kddet.benchmarks.schedule: shortened schedules scale the LR steps but keep the warm-ups."""

from conftest import REPO, STUDENT_CONFIG, load_config

from kddet.benchmarks.schedule import schedule_iters, schedule_opts


def as_dict(opts):
    return dict(zip(opts[::2], opts[1::2]))


def test_schedule_scales_steps_but_not_warmup_and_keeps_milestones_below_the_end():
    solver = load_config(STUDENT_CONFIG).SOLVER
    opts = as_dict(schedule_opts(STUDENT_CONFIG, solver.MAX_ITER // 3))
    assert opts["SOLVER.MAX_ITER"] == solver.MAX_ITER // 3
    assert opts["SOLVER.STEPS"] == tuple(round(s / 3) for s in solver.STEPS)
    assert opts["SOLVER.WARMUP_ITERS"] == solver.WARMUP_ITERS  # a short schedule is no less fragile at first
    tiny = as_dict(schedule_opts(STUDENT_CONFIG, 3))
    assert all(1 <= s < 3 for s in tiny["SOLVER.STEPS"]) and list(tiny["SOLVER.STEPS"]) == sorted(
        set(tiny["SOLVER.STEPS"])
    )
    assert tiny["SOLVER.WARMUP_ITERS"] == 1  # capped at half the schedule
    assert as_dict(schedule_opts(STUDENT_CONFIG, 1))["SOLVER.STEPS"] == ()


def test_schedule_keeps_the_warmup_of_a_loss_but_caps_it_at_half():
    fgfi = REPO / "configs/shapes/fgfi.yaml"
    warmup = load_config(fgfi).KD.FGFI.WARMUP_ITERS
    assert as_dict(schedule_opts(fgfi, 4 * warmup))["KD.FGFI.WARMUP_ITERS"] == warmup
    assert as_dict(schedule_opts(fgfi, warmup))["KD.FGFI.WARMUP_ITERS"] == warmup // 2


def test_the_schedules_are_shares_of_the_configs_own():
    teacher, student = schedule_iters("full")
    assert (teacher, student) == (2400, 300)
    assert schedule_iters("cpu-short") == (teacher, student // 2)
    assert schedule_iters("demo") == (teacher // 6, student)  # tools/demo.py's: ten minutes on a 2-core CPU
