"""Frozen BatchNorm statistics for randomly initialised networks (benchmarks and tests).

A freshly built detectron2 network with FrozenBN holds mean 0 and variance 1 in every frozen
BatchNorm: a random R-101 then adds up 33 residual blocks unnormalised, its FPN features reach a
standard deviation of ~1e6 and anything trained on them diverges at once. Measuring the statistics
on an image, as BatchNorm's running averages would hold them, gives the random network the
activation scale of a trained one.
"""

from typing import Dict, List

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNN

__all__ = ["measure_frozen_bn_statistics"]


def _measure(module: FrozenBatchNorm2d, inputs: tuple) -> None:
    x = inputs[0]
    module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    module.running_var.copy_(x.var(dim=(0, 2, 3)))


@torch.no_grad()
def measure_frozen_bn_statistics(model: GeneralizedRCNN, batched_inputs: List[Dict]) -> None:
    """Set every FrozenBatchNorm2d of ``model``'s backbone to the mean and variance of its input when
    the backbone sees ``batched_inputs`` (detectron2's input dicts), layer after layer, in place; a
    backbone without FrozenBN is left as it is."""
    hooks = [
        m.register_forward_pre_hook(_measure) for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)
    ]
    if not hooks:
        return  # no forward: it would move a trainable BatchNorm's running averages
    try:
        model.backbone(model.preprocess_image(batched_inputs).tensor)
    finally:
        for hook in hooks:
            hook.remove()
