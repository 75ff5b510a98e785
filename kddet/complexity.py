"""Parameters and inference FLOPs of a detector, counted by fvcore (tools/benchmark.py and
the benchmark tables of kddet.benchmarks report them for teacher and student)."""

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from .engine import student_only

__all__ = ["inference_gflops", "params_and_flops"]


class _ImageToBoxes(torch.nn.Module):
    """A detector as a tensor-in, tensor-out function, so that fvcore can trace it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.inference([{"image": image}], do_postprocess=False)[0].pred_boxes.tensor


def inference_gflops(model: torch.nn.Module, image: torch.Tensor) -> float:
    """GFLOPs of one inference of a built detector (in eval mode) on ``image``."""
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(_ImageToBoxes(model), (image,))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return flops.total() / 1e9


def params_and_flops(cfg: CfgNode, image: torch.Tensor) -> tuple:
    """(millions of parameters, GFLOPs of one inference on ``image``) of the detector ``cfg``
    describes; a distillation config counts its student alone, which is what gets deployed."""
    model = build_model(student_only(cfg)).eval()
    params = sum(p.numel() for p in model.parameters())
    return params / 1e6, inference_gflops(model, image)
