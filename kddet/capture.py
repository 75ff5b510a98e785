"""Capture what named parts of a model return during one forward pass.

Distillation losses read intermediate results of the student (FPN features, RPN outputs,
anchors, the sampled proposals, RoI-head outputs) without changing how detectron2 computes
them: a forward hook records a module's output, a temporary instance attribute records a
method's return value. Everything is removed again when the ``with`` block ends.
"""
import contextlib
import functools
from typing import Any, Dict, Mapping

from torch import nn

__all__ = ["Recorder", "STUDENT_SOURCES"]

# What each kind of record is, as the dotted path of a GeneralizedRCNN part whose output it is.
STUDENT_SOURCES: Dict[str, str] = {
    "features": "backbone",  # dict of FPN levels
    "anchors": "proposal_generator.anchor_generator",  # list of Boxes, one per level
    "rpn": "proposal_generator.rpn_head",  # (objectness logits, anchor deltas), lists per level
    "rpn_labels": "proposal_generator.label_and_sample_anchors",  # per image: labels 1/0/-1 (unsampled), matched gt
    "proposals": "roi_heads.label_and_sample_proposals",  # sampled Instances with gt fields
    "box_features": "roi_heads.box_head",  # (R, D) features of the sampled proposals
    "predictions": "roi_heads.box_predictor",  # (class scores (R, K+1), box deltas)
}


class Recorder(contextlib.AbstractContextManager):
    """``with Recorder(model, {"features": "backbone"}) as rec: model(x)`` leaves the backbone's
    output in ``rec.records["features"]``."""

    def __init__(self, model: nn.Module, sources: Mapping[str, str]):
        self.model = model
        self.sources = dict(sources)
        self.records: Dict[str, Any] = {}
        self._undo = []

    def _store(self, name: str, value: Any) -> None:
        if name in self.records:
            raise RuntimeError(f"'{self.sources[name]}' ran twice in one forward; cannot tell which output to keep")
        self.records[name] = value

    def __enter__(self) -> "Recorder":
        self.records = {}
        for name, path in self.sources.items():
            owner_path, _, attr = path.rpartition(".")
            owner = self.model.get_submodule(owner_path) if owner_path else self.model
            target = getattr(owner, attr)
            if isinstance(target, nn.Module):
                handle = target.register_forward_hook(lambda _m, _i, out, name=name: self._store(name, out))
                self._undo.append(handle.remove)
            else:
                owner.__dict__[attr] = self._wrap(name, target)
                self._undo.append(functools.partial(owner.__dict__.pop, attr))
        return self

    def _wrap(self, name: str, method):
        @functools.wraps(method)
        def recorded(*args, **kwargs):
            out = method(*args, **kwargs)
            self._store(name, out)
            return out

        return recorded

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()
