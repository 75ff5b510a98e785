"""The ablation studies on the embedded data set, as data: each varies a recipe's options and
compares every variant, over seeds, with one baseline trained with the same seeds and schedule."""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from .recipes import FGFI_STANDARDISED, INHERIT, WIDE, config_of

VAL, TEST = "kddet_shapes_val", "kddet_shapes_test"
SCRATCH_STUDENT, PRETRAINED_STUDENT = "student", "mobilenet_v2/student"


@dataclass(frozen=True)
class Variant:
    """A recipe (named as under configs/shapes/) and the options that make the variant."""

    name: str
    recipe: str
    options: tuple = ()


@dataclass(frozen=True)
class Study:
    name: str
    description: str  # what the study asks, one line: the table's subtitle
    baseline: str  # the recipe every variant is compared with (a student alone, or a recipe as committed)
    split: str  # the evaluation split, the baseline's test set
    variants: Tuple[Variant, ...]
    seeds: Tuple[int, ...] = ()  # of every run; () for each model's own (recipes.seeds_of, 3 for a variant)

    @property
    def baseline_config(self) -> Path:
        return config_of(self.baseline)


BALANCE = ("KD.BALANCE.ENABLED", True)
HEAD_LOSSES = ["RPNSoftCls", "RCNSoftCls", "RPNBoundedReg", "RCNBoundedReg"]  # Chen et al. 2017 without the hint
COMBINED = ["NST", "SP", *HEAD_LOSSES]  # configs/shapes/mobilenet_v2/combined.yaml
COMBINED_AB = ("KD.LOSSES", [*COMBINED, "AB"], "KD.AB.WEIGHT", 1.0)
COMBINED_TUNED = [*COMBINED, "AB", "OFD"]  # configs/shapes/mobilenet_v2/combined_tuned.yaml
CLIP = (
    "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0,
)  # fmt: skip
FAST_TEACHER = ("KD.TEACHER.PRECISION", "bf16", "KD.TEACHER.CHANNELS_LAST", True)
FIVE, TEN = tuple(range(1, 6)), tuple(range(1, 11))
V = Variant


def raw_fgd(weight: float) -> tuple:
    """FGD on the teacher's raw maps at ``weight``: the pretrained recipe's form before it standardised them."""
    return ("KD.FGD.WEIGHT", weight, "KD.FGD.STANDARDIZE", False)


_STUDIES = [
    Study(
        "variance",
        "Whether a longer schedule narrows the scratch student's seed-to-seed spread.",
        SCRATCH_STUDENT, VAL,
        (V("600 iterations (2x)", "student", ("SOLVER.MAX_ITER", 600, "SOLVER.STEPS", (450, 550))),),
        FIVE,
    ),
    Study(
        "fitnet",
        "Which of FitNets' choices (weight, adapter, levels, target, balancing) makes it hurt the scratch student.",
        SCRATCH_STUDENT, VAL,
        (
            V("recipe (weight 1, 1x1 adapter, raw target, p2-p6)", "fitnet"),
            V("weight 0.1", "fitnet", ("KD.FITNET.WEIGHT", 0.1)),
            V("weight 0.01", "fitnet", ("KD.FITNET.WEIGHT", 0.01)),
            V("3x3 adapter", "fitnet", ("KD.FITNET.ADAPTER", "conv3x3")),
            V("coarse levels only (p4-p6)", "fitnet", ("KD.FITNET.IN_FEATURES", ["p4", "p5", "p6"])),
            V("standardised target", "fitnet", ("KD.FITNET.STANDARDIZE_TARGET", True)),
            V("balanced (0.5 of the detector's losses)", "fitnet", BALANCE),
            V("standardised target, balanced", "fitnet", ("KD.FITNET.STANDARDIZE_TARGET", True, *BALANCE)),
        ),
    ),
    Study(
        "fgfi",
        "Which of FGFI's choices (lambda, adapter, masks, warm-up, target, balancing) makes it hurt the scratch "
        "student; lambda 0 runs the distillation path with nothing distilled.",
        SCRATCH_STUDENT, VAL,
        (
            V("recipe (lambda 0.01, 3x3 adapter, psi 0.5, warm-up 50)", "fgfi"),
            V("lambda 0.001", "fgfi", ("KD.FGFI.WEIGHT", 0.001)),
            V("lambda 0.0001", "fgfi", ("KD.FGFI.WEIGHT", 0.0001)),
            V("1x1 adapter", "fgfi", ("KD.FGFI.ADAPTER", "conv1x1")),
            V("psi 0.8 (tighter masks)", "fgfi", ("KD.FGFI.PSI", 0.8)),
            V("warm-up 150 (half the schedule)", "fgfi", ("KD.FGFI.WARMUP_ITERS", 150)),
            V("full map instead of the masks, same lambda and normalisation", "fgfi", ("KD.FGFI.FULL_MAP", True)),
            V("standardised target", "fgfi", ("KD.FGFI.STANDARDIZE_TARGET", True)),
            V("balanced (0.5 of the detector's losses)", "fgfi", BALANCE),
            V("standardised target, balanced", "fgfi", ("KD.FGFI.STANDARDIZE_TARGET", True, *BALANCE)),
            V("lambda 0 (nothing distilled)", "fgfi", ("KD.FGFI.WEIGHT", 0.0)),
        ),
    ),
    Study(
        "balance",
        "Whether KD.BALANCE keeps KD and SP at the weights that diverge unbalanced, against their hand-tuned weights.",
        SCRATCH_STUDENT, VAL,
        (
            V("KD, hand-tuned weight 0.25", "kd"),
            V("KD, the weight 1.0 that diverged, balanced", "kd", ("KD.KD.WEIGHT", 1.0, *BALANCE)),
            V("SP, hand-tuned weight 300", "sp"),
            V("SP, the paper's weight 3000 (diverged), balanced", "sp", ("KD.SP.WEIGHT", 3000.0, *BALANCE)),
        ),
        (1, 2, 3),
    ),
    Study(
        "pretrained",
        "The hint losses on the ImageNet-pretrained student at lower weights, and Chen et al.'s recipe without its "
        "hint.",
        PRETRAINED_STUDENT, TEST,
        (
            V("FitNets, weight 0.1", "mobilenet_v2/fitnet", ("KD.FITNET.WEIGHT", 0.1)),
            V("FitNets, weight 0.01", "mobilenet_v2/fitnet", ("KD.FITNET.WEIGHT", 0.01)),
            V("FGFI, lambda 0.001", "mobilenet_v2/fgfi", ("KD.FGFI.WEIGHT", 0.001)),
            V("FGFI, lambda 0.0001", "mobilenet_v2/fgfi", ("KD.FGFI.WEIGHT", 0.0001)),
            V("Chen 2017 without the hint (head losses only)", "mobilenet_v2/chen2017", ("KD.LOSSES", HEAD_LOSSES)),
        ),
    ),
    Study(
        "fgfi_pretrained",
        "Whether FGFI keeps the pretrained student once its adapters are fitted during warm-up "
        "(KD.FGFI.FIT_ADAPTERS_IN_WARMUP) rather than switched on at their random start.",
        PRETRAINED_STUDENT, TEST,
        (
            V("FGFI, adapters fitted during warm-up", "mobilenet_v2/fgfi", ("KD.FGFI.FIT_ADAPTERS_IN_WARMUP", True)),
            V(
                "FGFI, lambda 0.001, adapters fitted during warm-up", "mobilenet_v2/fgfi",
                ("KD.FGFI.WEIGHT", 0.001, "KD.FGFI.FIT_ADAPTERS_IN_WARMUP", True),
            ),
            V("FGFI, lambda 0 (nothing distilled)", "mobilenet_v2/fgfi", ("KD.FGFI.WEIGHT", 0.0)),
        ),
    ),
    Study(
        "combined_pretrained",
        "Whether the pretrained student's combined recipe gains from one more loss (AB) or from heavier feature terms.",
        PRETRAINED_STUDENT, TEST,
        (
            V("combined + AB", "mobilenet_v2/combined", COMBINED_AB),
            V(
                "combined, NST and SP at twice their weights", "mobilenet_v2/combined",
                ("KD.NST.WEIGHT", 100.0, "KD.SP.WEIGHT", 600.0),
            ),
        ),
    ),
    Study(
        "heads_pretrained",
        "Which part of combined + AB carries it, and whether its head losses gain from a softer target, a harder "
        "pull or one more feature term.",
        PRETRAINED_STUDENT, TEST,
        (
            V(
                "head losses + AB (no NST, no SP)", "mobilenet_v2/combined",
                ("KD.LOSSES", [*HEAD_LOSSES, "AB"], "KD.AB.WEIGHT", 1.0),
            ),
            V(
                "combined + AB, soft classification at temperature 2", "mobilenet_v2/combined",
                (*COMBINED_AB, "KD.RPNSOFTCLS.TEMPERATURE", 2.0, "KD.RCNSOFTCLS.TEMPERATURE", 2.0),
            ),
            V(
                "combined + AB, soft classification mu 0.25 (more teacher)", "mobilenet_v2/combined",
                (*COMBINED_AB, "KD.RPNSOFTCLS.MU", 0.25, "KD.RCNSOFTCLS.MU", 0.25),
            ),
            V(
                "combined + AB, bounded regression at weight 1", "mobilenet_v2/combined",
                (*COMBINED_AB, "KD.RPNBOUNDEDREG.WEIGHT", 1.0, "KD.RCNBOUNDEDREG.WEIGHT", 1.0),
            ),
            V(
                "combined + AB + OFD", "mobilenet_v2/combined",
                ("KD.LOSSES", [*COMBINED, "AB", "OFD"], "KD.AB.WEIGHT", 1.0, "KD.OFD.WEIGHT", 1.0),
            ),
        ),
    ),
    Study(
        "card_pretrained",
        "The weights of NST and of Chen et al.'s hint on the pretrained student (the source of "
        "configs/shapes/mobilenet_v2/nst.yaml's 100 and chen2017.yaml's 0.02).",
        PRETRAINED_STUDENT, TEST,
        (
            V("NST, weight 50 (the scratch recipe's)", "mobilenet_v2/nst", ("KD.NST.WEIGHT", 50.0)),
            V("NST, weight 100", "mobilenet_v2/nst", ("KD.NST.WEIGHT", 100.0)),
            V("NST, weight 200", "mobilenet_v2/nst", ("KD.NST.WEIGHT", 200.0)),
            V("Chen 2017, hint at weight 0.5 (the scratch recipe's)", "mobilenet_v2/chen2017",
              ("KD.FITNET.WEIGHT", 0.5)),
            V("Chen 2017, hint at weight 0.1", "mobilenet_v2/chen2017", ("KD.FITNET.WEIGHT", 0.1)),
            V("Chen 2017, hint at weight 0.02", "mobilenet_v2/chen2017", ("KD.FITNET.WEIGHT", 0.02)),
        ),
    ),
    Study(
        "clip_pretrained",
        "Whether clipping each gradient's norm (SOLVER.CLIP_GRADIENTS) keeps the recipes that diverge on some seeds "
        "as the learning rate peaks, and what it costs the student alone (the table predates the student's clipping).",
        PRETRAINED_STUDENT, TEST,
        (
            V("student alone, gradients clipped", "mobilenet_v2/student", CLIP),
            V("FGFI, gradients clipped", "mobilenet_v2/fgfi", CLIP),
            V("virtual teacher, gradients clipped", "mobilenet_v2/virtual_teacher", CLIP),
            V("combined + AB, gradients clipped", "mobilenet_v2/combined", (*COMBINED_AB, *CLIP)),
            V("combined_tuned, gradients clipped", "mobilenet_v2/combined_tuned", CLIP),
            V("NST, gradients clipped", "mobilenet_v2/nst", CLIP),
            V("Chen 2017, gradients clipped", "mobilenet_v2/chen2017", CLIP),
        ),
    ),
    Study(
        "gap_pretrained",
        "With clipping in the student: the teacher-free bar, the tuned recipe, and whether one more feature term or "
        "a stronger NST takes it past 80% of the gap.",
        PRETRAINED_STUDENT, TEST,
        (
            V("virtual teacher (no teacher)", "mobilenet_v2/virtual_teacher"),
            V("combined_tuned", "mobilenet_v2/combined_tuned"),
            V(
                "combined_tuned + PKD", "mobilenet_v2/combined_tuned",
                ("KD.LOSSES", [*COMBINED_TUNED, "PKD"], "KD.PKD.WEIGHT", 1.0),
            ),
            V("combined_tuned, NST at weight 100", "mobilenet_v2/combined_tuned", ("KD.NST.WEIGHT", 100.0)),
            V(
                "combined_tuned, soft classification mu 0.25 (more teacher)", "mobilenet_v2/combined_tuned",
                ("KD.RPNSOFTCLS.MU", 0.25, "KD.RCNSOFTCLS.MU", 0.25),
            ),
        ),
    ),
    Study(
        "standardised_in_combined_pretrained",
        "Whether the standardised imitations (FGFI with both maps standardised, PKD) add to combined_tuned.",
        PRETRAINED_STUDENT, TEST,
        (
            V(
                "combined_tuned + FGFI, both maps standardised, lambda 0.05", "mobilenet_v2/combined_tuned",
                ("KD.LOSSES", [*COMBINED_TUNED, "FGFI"], *FGFI_STANDARDISED, "KD.FGFI.WEIGHT", 0.05,
                 "KD.FGFI.WARMUP_ITERS", 50),
            ),
            V(
                "combined_tuned + PKD at weight 5", "mobilenet_v2/combined_tuned",
                ("KD.LOSSES", [*COMBINED_TUNED, "PKD"], "KD.PKD.WEIGHT", 5.0),
            ),
        ),
        FIVE,
    ),
    Study(
        "nst_clip_pretrained",
        "Whether NST needs a higher weight once clipping bounds the student's steps.",
        PRETRAINED_STUDENT, TEST,
        (
            V("NST, weight 100 (the recipe)", "mobilenet_v2/nst"),
            V("NST, weight 200", "mobilenet_v2/nst", ("KD.NST.WEIGHT", 200.0)),
            V("NST, weight 400", "mobilenet_v2/nst", ("KD.NST.WEIGHT", 400.0)),
        ),
    ),
    Study(
        "hints_clip_pretrained",
        "Whether the hint losses hurt the clipped pretrained student through the finest level, where a thin bar is a "
        "few cells wide, or at any level and weight; and the same maps compared standardised (PKD, FGFI).",
        PRETRAINED_STUDENT, TEST,
        (
            V("FitNets, weight 0.01", "mobilenet_v2/fitnet", ("KD.FITNET.WEIGHT", 0.01)),
            V("FitNets on p2 only", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p2"])),
            V("FitNets without p2 (p3-p6)", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p3", "p4", "p5", "p6"])),
            V("FitNets on p4-p6", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p4", "p5", "p6"])),
            V("FGFI without p2 (p3-p6)", "mobilenet_v2/fgfi", ("KD.FGFI.IN_FEATURES", ["p3", "p4", "p5", "p6"])),
            V(
                "PKD instead (both maps standardised), weight 1", "mobilenet_v2/fitnet",
                ("KD.LOSSES", ["PKD"], "KD.PKD.WEIGHT", 1.0),
            ),
            V("PKD instead, weight 5", "mobilenet_v2/fitnet", ("KD.LOSSES", ["PKD"], "KD.PKD.WEIGHT", 5.0)),
            V("FGFI, both maps standardised", "mobilenet_v2/fgfi", FGFI_STANDARDISED),
            V(
                "FGFI, both maps standardised, lambda 0.05", "mobilenet_v2/fgfi",
                (*FGFI_STANDARDISED, "KD.FGFI.WEIGHT", 0.05),
            ),
        ),
    ),
    Study(
        "variance_pretrained",
        "How much of the pretrained student's spread is evaluation noise: the same trainings read on the 200 images "
        "of kddet_shapes_val instead of the 2000 of kddet_shapes_test (compare the spreads, not the APs).",
        PRETRAINED_STUDENT, TEST,
        (V("evaluated on kddet_shapes_val (200 images)", "mobilenet_v2/student", ("DATASETS.TEST", (VAL,))),),
        FIVE,
    ),
    Study(
        "variance_sources_pretrained",
        "What narrows the pretrained student's spread: one data stream for every seed, or anchors as elongated as "
        "the bars (a student whose anchors differ from the teacher's cannot take the RPN's per-anchor losses).",
        PRETRAINED_STUDENT, TEST,
        (
            V("one data stream for every seed (DATALOADER.SEED 1)", "mobilenet_v2/student", ("DATALOADER.SEED", 1)),
            V(
                "anchors 1:4 to 4:1", "mobilenet_v2/student",
                ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[0.25, 0.5, 1.0, 2.0, 4.0]]),
            ),
        ),
        TEN,
    ),
    Study(
        "fast_teacher",
        "The AP cost of the fast teacher (KD.TEACHER.PRECISION bf16, CHANNELS_LAST) against the same recipe's fp32 "
        "one.",
        "combined", VAL,
        (V("combined, teacher in bf16 and channels_last", "combined", FAST_TEACHER),),
    ),
    Study(
        "fast_teacher_nst",
        "The AP cost of the fast teacher on NST, a feature loss, against the same recipe's fp32 teacher.",
        "nst", VAL,
        (V("NST, teacher in bf16 and channels_last", "nst", FAST_TEACHER),),
    ),
    Study(
        "inherit_pretrained",
        "Whether FGD and MGD gain from starting the student's neck and heads from the teacher's "
        "(KD.TEACHER.INIT_STUDENT), as their authors train: the student needs the teacher's FPN and box-head "
        "widths for any layer to match, so every variant is that wider student; compare the variants with the "
        "first, the wider student alone, not with the baseline row, which is the table's narrower student.",
        PRETRAINED_STUDENT, VAL,
        (
            V("wider student alone (teacher's FPN and box-head widths)", "mobilenet_v2/student", WIDE),
            V("FGD, wider student", "mobilenet_v2/fgd", (*WIDE, *raw_fgd(0.33))),
            V("FGD, wider student inheriting", "mobilenet_v2/fgd", (*WIDE, *INHERIT, *raw_fgd(0.33))),
            V("MGD, wider student", "mobilenet_v2/mgd", WIDE),
            V("MGD, wider student inheriting", "mobilenet_v2/mgd", (*WIDE, *INHERIT)),
        ),
        (1, 2, 3),
    ),
    Study(
        "headline_parts",
        "How much of the headline recipe's gain is its start from the teacher's neck and heads alone: the recipe "
        "with FGD's weight at 0 inherits and distils nothing (FGD inheriting: inherit_pretrained, same seeds).",
        "mobilenet_v2_wide/student", VAL,
        (V("inheriting, FGD at weight 0", "mobilenet_v2_wide/fgd_inheriting", ("KD.FGD.WEIGHT", 0.0)),),
        (1, 2, 3),
    ),
    Study(
        "combined_tuned_val",
        "Whether what combined_tuned adds to the combined recipe (AB and OFD, soft classification at temperature 2 "
        "and mu 0.25, bounded regression at weight 1), each chosen by earlier studies on the test images, helps it on "
        "the validation images.",
        "mobilenet_v2/combined", VAL,
        (
            V(
                "combined + what combined_tuned adds", "mobilenet_v2/combined",
                (
                    "KD.LOSSES", COMBINED_TUNED,
                    "KD.RPNSOFTCLS.TEMPERATURE", 2.0, "KD.RPNSOFTCLS.MU", 0.25,
                    "KD.RCNSOFTCLS.TEMPERATURE", 2.0, "KD.RCNSOFTCLS.MU", 0.25,
                    "KD.RPNBOUNDEDREG.WEIGHT", 1.0, "KD.RCNBOUNDEDREG.WEIGHT", 1.0,
                ),
            ),
        ),
        (1, 2, 3),
    ),
    Study(
        "fgfi_forms_pretrained",
        "Which form of FGFI helps the pretrained student on the validation images: the recipe as then shipped (its "
        "adapters switched on at their random start after the warm-up), its adapters fitted during the warm-up, or "
        "FitNets' 1x1 adapter.",
        PRETRAINED_STUDENT, VAL,
        (
            V(
                "FGFI as then shipped (both maps standardised, lambda 0.038, 3x3 adapter, warm-up 50)",
                "mobilenet_v2/fgfi", ("KD.FGFI.FIT_ADAPTERS_IN_WARMUP", False),
            ),
            V("adapters fitted during the warm-up", "mobilenet_v2/fgfi", ("KD.FGFI.FIT_ADAPTERS_IN_WARMUP", True)),
            V(
                "1x1 adapter (FitNets')", "mobilenet_v2/fgfi",
                ("KD.FGFI.FIT_ADAPTERS_IN_WARMUP", False, "KD.FGFI.ADAPTER", "conv1x1"),
            ),
        ),
        (1, 2, 3),
    ),
    Study(
        "fitnet_forms_pretrained",
        "Whether FitNets' hints help the pretrained student on the validation images once their adapters are fitted "
        "before the student is pulled (as FGFI's are, and as FitNets' first stage trains the hint on its own): the "
        "recipe without a warm-up, with a 50-iteration warm-up that fits its 1x1 adapters, and with 3x3 adapters; "
        "above the weight its search chose (8.1 of four one-seed trials); and the hint decaying linearly to 0 over "
        "the schedule, so that it guides the start and leaves the end to the detector's losses.",
        PRETRAINED_STUDENT, VAL,
        (
            V(
                "FitNets without a warm-up (both maps standardised, weight 8.1, 1x1 adapter)", "mobilenet_v2/fitnet",
                ("KD.FITNET.WEIGHT", 8.1, "KD.FITNET.WARMUP_ITERS", 0, "KD.FITNET.FIT_ADAPTERS_IN_WARMUP", False),
            ),
            V(
                "adapters fitted during a 50-iteration warm-up", "mobilenet_v2/fitnet",
                ("KD.FITNET.WEIGHT", 8.1, "KD.FITNET.WARMUP_ITERS", 50, "KD.FITNET.FIT_ADAPTERS_IN_WARMUP", True),
            ),
            V(
                "3x3 adapters fitted during the warm-up", "mobilenet_v2/fitnet",
                (
                    "KD.FITNET.WEIGHT", 8.1, "KD.FITNET.WARMUP_ITERS", 50, "KD.FITNET.FIT_ADAPTERS_IN_WARMUP", True,
                    "KD.FITNET.ADAPTER", "conv3x3",
                ),
            ),
            V("weight 16, no warm-up", "mobilenet_v2/fitnet", ("KD.FITNET.WEIGHT", 16.0, "KD.FITNET.WARMUP_ITERS", 0)),
            V("weight 32, no warm-up", "mobilenet_v2/fitnet", ("KD.FITNET.WEIGHT", 32.0, "KD.FITNET.WARMUP_ITERS", 0)),
            V(
                "weight 16 decaying linearly to 0", "mobilenet_v2/fitnet",
                ("KD.FITNET.WEIGHT", 16.0, "KD.FITNET.WARMUP_ITERS", 0, "KD.FITNET.DECAY_TO_ZERO", True),
            ),
            V(
                "weight 32 decaying linearly to 0", "mobilenet_v2/fitnet",
                ("KD.FITNET.WEIGHT", 32.0, "KD.FITNET.WARMUP_ITERS", 0, "KD.FITNET.DECAY_TO_ZERO", True),
            ),
        ),
        (1, 2, 3),
    ),
    Study(
        "fitnet_levels_pretrained",
        "Which FPN levels FitNets' hint should reach on the pretrained student, on the validation images: the shipped "
        "recipe (weight 16, every level p2-p6) against the hint on the fine levels alone (p2, p3), the coarse ones "
        "alone (p4-p6) and the middle three (p3-p5); the loss averages over its levels, so each level's share grows "
        "as levels are dropped.",
        PRETRAINED_STUDENT, VAL,
        (
            V("FitNets as shipped (p2-p6)", "mobilenet_v2/fitnet"),
            V("fine levels alone (p2, p3)", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p2", "p3"])),
            V("coarse levels alone (p4-p6)", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p4", "p5", "p6"])),
            V("middle levels (p3-p5)", "mobilenet_v2/fitnet", ("KD.FITNET.IN_FEATURES", ["p3", "p4", "p5"])),
        ),
        (1, 2, 3),
    ),
    Study(
        "fgd_forms_pretrained",
        "Which of FGD's terms costs the pretrained student on the validation images: the recipe as shipped, without "
        "its global term, without its background imitation, its foreground imitation alone; and whether fitting its "
        "1x1 aligns (the student is narrower than the teacher) and GcBlocks in a warm-up before the student is pulled "
        "removes the cost; and whether comparing the maps standardised per channel (as FitNets' and FGFI's recipes "
        "do) does, at five weights; and, at weight 0, whether the cost comes from the pull at all.",
        PRETRAINED_STUDENT, VAL,
        (
            V("FGD as then shipped (raw maps, weight 0.078)", "mobilenet_v2/fgd", raw_fgd(0.078)),
            V("without the global term", "mobilenet_v2/fgd", (*raw_fgd(0.078), "KD.FGD.LAMBDA", 0.0)),
            V("without the background imitation", "mobilenet_v2/fgd", (*raw_fgd(0.078), "KD.FGD.BETA", 0.0)),
            V(
                "foreground imitation alone", "mobilenet_v2/fgd",
                (*raw_fgd(0.078), "KD.FGD.BETA", 0.0, "KD.FGD.GAMMA", 0.0, "KD.FGD.LAMBDA", 0.0),
            ),
            V(
                "aligns and GcBlocks fitted during a 50-iteration warm-up", "mobilenet_v2/fgd",
                (*raw_fgd(0.078), "KD.FGD.WARMUP_ITERS", 50, "KD.FGD.FIT_ADAPTERS_IN_WARMUP", True),
            ),
            *(
                V(f"both maps standardised, weight {weight}", "mobilenet_v2/fgd",
                  ("KD.FGD.STANDARDIZE", True, "KD.FGD.WEIGHT", weight))
                for weight in (0.078, 0.5, 2.0, 8.0, 32.0)
            ),
            V("weight 0 (its modules built and run, no pull)", "mobilenet_v2/fgd", raw_fgd(0.0)),
        ),
        (1, 2, 3),
    ),
]  # fmt: skip
STUDIES: Dict[str, Study] = {study.name: study for study in _STUDIES}
