"""The student's convolutions in channels_last (NHWC) memory format (``MODEL.CHANNELS_LAST``).

Only the order of values in memory changes, never the values: oneDNN on CPUs and cuDNN's tensor
cores often run NHWC convolutions faster. tools/benchmark.py measures whether they do here.
"""

import torch
from torch import nn

__all__ = ["use_channels_last"]


def _input_channels_last(backbone: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def use_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-d weights to channels_last, and the images its backbone receives, in place.
    ``model`` is a detectron2 R-CNN: the normalised image batch enters through ``model.backbone``."""
    model.to(memory_format=torch.channels_last)
    model.backbone.register_forward_pre_hook(_input_channels_last)
    return model
