"""Student-side adaptation layers r(.) that map student features onto the teacher's channels.

They are trained with the student, saved in its checkpoint and dropped by
``tools/export_student.py``.
"""
from torch import nn

__all__ = ["build_adapter"]


def build_adapter(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """``kind``: ``conv1x1`` or ``conv3x3`` (stride 1, same spatial size)."""
    kernel_sizes = {"conv1x1": 1, "conv3x3": 3}
    if kind not in kernel_sizes:
        raise ValueError(f"Unknown adapter '{kind}'; choose one of {sorted(kernel_sizes)}")
    k = kernel_sizes[kind]
    adapter = nn.Conv2d(in_channels, out_channels, kernel_size=k, padding=k // 2)
    nn.init.kaiming_uniform_(adapter.weight, a=1)
    nn.init.zeros_(adapter.bias)
    return adapter
