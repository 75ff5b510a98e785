"""Checks that a distillation recipe distils what it says, before the first training step.

A config can be valid for detectron2 and still distil nothing: ``KD.LOSSES`` under a
meta-architecture that ignores it, a loss whose weight is 0 or whose warm-up outlasts the
schedule, an edited ``KD.<NAME>`` node of a loss that is not enabled. ``check_distillation``
stops on settings that cannot train as written and warns about settings that do nothing;
``distillation_summary`` is the table the training log and ``tools/train_net.py --check`` print.
Loss nodes are read generically (``*WEIGHT``, ``MU``, ``IN_FEATURES``, ``WARMUP_ITERS`` where a
node has them), so a new loss is checked without code of its own here.
"""

import logging
import os
from typing import Dict, List, Mapping, Optional, Tuple

from tabulate import tabulate
from torch import nn

from detectron2.config import CfgNode, get_cfg

from .config import add_kddet_config
from .capture import RECORD_KINDS
from .losses import KD_LOSS_REGISTRY, kd_loss_classes
from .model_zoo import cached_file, config_file, is_url

__all__ = ["DISTILLATION_ARCH", "check_distillation", "distillation_problems", "distillation_summary", "term_weights"]

logger = logging.getLogger(__name__)

DISTILLATION_ARCH = "DistillationRCNN"


def term_weights(node: CfgNode) -> Dict[str, float]:
    """The weights of a loss node's terms: every ``WEIGHT`` / ``*_WEIGHT`` key except
    ``BACKGROUND_WEIGHT`` (a class weight inside a term), and ``1 - MU`` where ``MU`` splits a
    classification loss between detectron2's hard term and the soft one (Chen et al. 2017)."""
    weights = {key: value for key, value in node.items() if key.endswith("WEIGHT") and key != "BACKGROUND_WEIGHT"}
    if "MU" in node:
        weights["1 - MU"] = 1.0 - node.MU
    return weights


def _qualified(key: str, term: str) -> str:
    """``KD.FITNET.WEIGHT`` for the term ``WEIGHT`` of ``KD.FITNET``; ``1 - KD.RPNSOFTCLS.MU`` for ``1 - MU``."""
    return f"1 - {key}.MU" if term == "1 - MU" else f"{key}.{term}"


def _needs_teacher(loss_names: List[str]) -> bool:
    return any(KD_LOSS_REGISTRY.get(name).needs_teacher for name in loss_names)


def distillation_problems(cfg: CfgNode) -> Tuple[List[str], List[str]]:
    """(errors, warnings) of the distillation settings of ``cfg``, read from the config alone.
    Errors are settings that cannot train as written; warnings, settings that do nothing."""
    errors: List[str] = []
    warnings: List[str] = []
    losses = list(cfg.KD.LOSSES)
    try:
        kd_loss_classes(cfg)
    except ValueError as unknown:
        errors.append(str(unknown))
    known = [name for name in losses if name in KD_LOSS_REGISTRY]

    arch = cfg.MODEL.META_ARCHITECTURE
    if losses and arch != DISTILLATION_ARCH:
        errors.append(
            f'KD.LOSSES is {losses}, but MODEL.META_ARCHITECTURE "{arch}" ignores it and would train the student '
            f'alone. Set MODEL.META_ARCHITECTURE: "{DISTILLATION_ARCH}" to distil (or clear KD.LOSSES).'
        )
    if not losses and arch == DISTILLATION_ARCH:
        warnings.append(
            f'MODEL.META_ARCHITECTURE is "{DISTILLATION_ARCH}" but KD.LOSSES is empty: it trains the student alone, '
            'with no teacher. Name the losses to distil in KD.LOSSES, e.g. ["FitNet"].'
        )
    if (cfg.KD.TEACHER.CONFIG_FILE or cfg.KD.TEACHER.WEIGHTS) and not _needs_teacher(known):
        warnings.append(f"KD.TEACHER is set, but no loss in KD.LOSSES = {losses} reads a teacher: it is not loaded.")

    for name in known:
        key = f"KD.{name.upper()}"
        node = cfg.KD[name.upper()]
        if "IN_FEATURES" in node and not node.IN_FEATURES:
            errors.append(f"{key}.IN_FEATURES is empty: {name} reads no feature level. List the levels to distil.")
        weights = term_weights(node)
        if weights and not any(weights.values()):
            zeros = " and ".join(f"{_qualified(key, term)} is 0" for term in weights)
            warnings.append(
                f"{name} can never act: {zeros}, so its terms are 0 at every step. Give it a weight, or remove "
                f"{name} from KD.LOSSES."
            )
        warmup = node.get("WARMUP_ITERS")
        if warmup is not None and warmup >= cfg.SOLVER.MAX_ITER:
            warnings.append(
                f"{name} can never act: {key}.WARMUP_ITERS = {warmup} >= SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}, "
                f"and its term is 0 until the warm-up ends. Lower {key}.WARMUP_ITERS below SOLVER.MAX_ITER."
            )

    defaults = _default_kd()
    for name in sorted(name for name, _ in KD_LOSS_REGISTRY):
        node_name = name.upper()
        if name in losses or node_name not in cfg.KD or cfg.KD[node_name] == defaults[node_name]:
            continue
        edits = {k: v for k, v in cfg.KD[node_name].items() if defaults[node_name].get(k) != v}
        warnings.append(
            f"KD.{node_name} is edited ({_format_edits(edits)}), but {name} is not in KD.LOSSES = {losses}: the edit "
            f'does nothing. Add "{name}" to KD.LOSSES, or drop the edit.'
        )
    return errors, warnings


def check_distillation(cfg: CfgNode) -> List[str]:
    """Stop with every error of :func:`distillation_problems` in one message; log each warning and
    return them."""
    errors, warnings = distillation_problems(cfg)
    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError("The distillation settings cannot train as written:\n" + "\n".join(f"- {e}" for e in errors))
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _default_kd() -> CfgNode:
    cfg = get_cfg()
    add_kddet_config(cfg)
    return cfg.KD


def _format_edits(edits: Mapping) -> str:
    return ", ".join(f"{k}: {v}" for k, v in edits.items())


def _num_params(module: Optional[nn.Module], skip_prefix: str = "") -> Optional[int]:
    if module is None:
        return None
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


def _weights_line(path: str) -> str:
    if not path:
        return "(none)"
    if is_url(path):  # a model-zoo or URL checkpoint, downloaded when training starts unless cached
        cached = cached_file(path)
        state = "cached:" if os.path.isfile(cached) else "not downloaded yet; training downloads it to"
        return f"{path} ({state} {cached})"
    return path if os.path.isfile(path) else f"{path} (not found)"


def _config_line(path: str) -> str:
    if not path:
        return "(none)"
    resolved = config_file(path)
    if resolved is None:
        return f"{path} (not found)"
    return path if resolved == path else f"{path} (detectron2 model zoo: {resolved})"


def distillation_summary(
    cfg: CfgNode, model: Optional[nn.Module] = None, gflops: Optional[Mapping[str, float]] = None
) -> str:
    """One table of what a run with ``cfg`` distils: the teacher, each enabled loss with its weight,
    levels, warm-up and what it reads, and (given the built ``model``) the parameters of student,
    adapters and teacher, with ``gflops`` of student and teacher where given."""
    losses = [name for name in cfg.KD.LOSSES if name in KD_LOSS_REGISTRY]
    lines = [f"Distillation: MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}, KD.LOSSES {list(cfg.KD.LOSSES)}"]
    lines.append(f"  student weights (MODEL.WEIGHTS): {_weights_line(cfg.MODEL.WEIGHTS)}")
    if _needs_teacher(losses):
        lines.append(f"  teacher config (KD.TEACHER.CONFIG_FILE): {_config_line(cfg.KD.TEACHER.CONFIG_FILE)}")
        lines.append(f"  teacher weights (KD.TEACHER.WEIGHTS): {_weights_line(cfg.KD.TEACHER.WEIGHTS)}")
    elif losses:
        lines.append("  teacher: none (no enabled loss reads one)")
    if losses:
        rows = []
        for name in losses:
            node = cfg.KD[name.upper()]
            cls = KD_LOSS_REGISTRY.get(name)
            parts = dict.fromkeys(RECORD_KINDS[need].part for need in cls.needs)
            rows.append(
                [
                    name,
                    ", ".join(f"{term} {value:g}" for term, value in term_weights(node).items()) or "-",
                    " ".join(node.get("IN_FEATURES", [])) or "-",
                    node.get("WARMUP_ITERS", "-"),
                    " + ".join(parts) + ("" if cls.needs_teacher else " (no teacher)"),
                ]
            )
        headers = ["loss", "weight", "levels", "warm-up iters", "reads"]
        lines.append(tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True))
        balance = cfg.KD.BALANCE
        if balance.ENABLED:
            balanced = list(balance.LOSSES) or losses
            lines.append(
                f"  KD.BALANCE: {', '.join(balanced)} measured for {balance.ITERS} iterations each, then held at "
                f"{balance.RATIO:g} x the detector's losses; their weights above only set where measuring starts"
            )
    if model is not None:
        teacher = getattr(model, "teacher", None)
        counts = {
            "student": _num_params(model, skip_prefix="kd_losses."),
            "adapters (trained, not exported)": _num_params(getattr(model, "kd_losses", None)),
            "teacher": _num_params(teacher),
        }
        rows = [[network, f"{count / 1e6:.2f}"] for network, count in counts.items() if count]  # skip 0 and None
        headers = ["network", "parameters (M)"]
        if gflops:
            headers.append("GFLOPs / image")
            for row in rows:
                row.append(f"{gflops[row[0]]:.2f}" if row[0] in gflops else "-")
        lines.append(tabulate(rows, headers=headers, tablefmt="pipe"))
    return "\n".join(lines)
