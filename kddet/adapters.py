"""Student-side adaptation layers r(.) that map student features onto the teacher's channels.

They are trained with the student, saved in its checkpoint and dropped by
``tools/export_student.py``.
"""

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TermSchedule", "build_adapter", "match_channels"]


def build_adapter(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """``kind``: ``conv1x1``, ``conv3x3`` (stride 1, same spatial size) or ``conv1x1_bn`` (a 1x1
    conv then BatchNorm: the student transform of Heo et al.'s AB and OFD)."""
    kernel_sizes = {"conv1x1": 1, "conv3x3": 3, "conv1x1_bn": 1}
    if kind not in kernel_sizes:
        raise ValueError(f"Unknown adapter '{kind}'; choose one of {sorted(kernel_sizes)}")
    k = kernel_sizes[kind]
    with_bn = kind.endswith("_bn")
    adapter = nn.Conv2d(in_channels, out_channels, kernel_size=k, padding=k // 2, bias=not with_bn)
    nn.init.kaiming_uniform_(adapter.weight, a=1)
    if not with_bn:
        nn.init.zeros_(adapter.bias)
        return adapter
    return nn.Sequential(adapter, nn.BatchNorm2d(out_channels))


def match_channels(in_channels: int, out_channels: int) -> nn.Module:
    """Identity when the widths agree, else a 1x1 adapter: for losses whose paper compares
    equal-width maps and adds nothing of its own (FSP, PKD, CWD)."""
    if in_channels == out_channels:
        return nn.Identity()
    return build_adapter("conv1x1", in_channels, out_channels)


@dataclass(frozen=True)
class TermSchedule:
    """How a term's weight runs over training. Its first ``iters`` iterations are a warm-up: by
    default the term is zeroed there (still computed, so that DDP sees its adapters used every step);
    with ``fit_adapters`` it keeps its weight but reads the student's features detached, so that the
    adapters learn to map the student and the student is pulled, once the warm-up ends, by what they
    cannot map rather than by their random start. With ``decay_end`` the weight then falls linearly to
    0 at that iteration: the term guides the start and leaves the end to the detector's own losses."""

    iters: int = 0
    fit_adapters: bool = False
    decay_end: int = 0

    @classmethod
    def from_node(cls, node, max_iter: int) -> "TermSchedule":
        """From a loss's ``WARMUP_ITERS`` and ``FIT_ADAPTERS_IN_WARMUP``, and, where the loss has the
        option, ``DECAY_TO_ZERO`` (0 at ``max_iter``, the schedule's end: SOLVER.MAX_ITER)."""
        decay_end = max_iter if node.get("DECAY_TO_ZERO", False) else 0
        return cls(node.WARMUP_ITERS, node.FIT_ADAPTERS_IN_WARMUP, decay_end)

    def student_input(self, feature: torch.Tensor, iteration: int) -> torch.Tensor:
        return feature.detach() if self.fit_adapters and iteration < self.iters else feature

    def weight(self, weight: float, iteration: int) -> float:
        if iteration < self.iters:
            return weight if self.fit_adapters else 0.0
        if self.decay_end:
            return weight * max(0.0, 1 - (iteration - self.iters) / max(1, self.decay_end - self.iters))
        return weight
