"""The loss contract (kddet.losses.DistillationLoss): what a registered loss must declare, checked
when the model is built."""
import pytest
from torch import nn

from conftest import STUDENT_CONFIG, load_config
from kddet.losses import KD_LOSS_REGISTRY, DistillationLoss, kd_loss_classes


class registered:
    """``with registered(cls):`` the loss class is in KD_LOSS_REGISTRY inside the block only."""

    def __init__(self, cls):
        self.cls = cls

    def __enter__(self):
        KD_LOSS_REGISTRY.register(self.cls)
        return self.cls

    def __exit__(self, *exc):
        KD_LOSS_REGISTRY._obj_map.pop(self.cls.__name__)


def test_a_loss_that_needs_an_unknown_record_kind_stops_at_build():
    class ReadsLogits(DistillationLoss):
        needs = ("features", "logits")

    with registered(ReadsLogits):
        cfg = load_config(STUDENT_CONFIG, "KD.LOSSES", ["ReadsLogits"])
        with pytest.raises(ValueError, match=r"ReadsLogits.needs names record kind\(s\) \['logits'\]") as error:
            kd_loss_classes(cfg)
    assert "'features', 'anchors', 'rpn'" in str(error.value)


def test_a_registered_loss_must_be_a_distillation_loss():
    class Bare(nn.Module):
        needs = ("features",)

    with registered(Bare), pytest.raises(TypeError, match="Bare does not subclass DistillationLoss"):
        kd_loss_classes(load_config(STUDENT_CONFIG, "KD.LOSSES", ["Bare"]))


@pytest.mark.parametrize("name", sorted(name for name, _ in KD_LOSS_REGISTRY))
def test_every_registered_loss_keeps_the_contract(name):
    cls = KD_LOSS_REGISTRY.get(name)
    assert issubclass(cls, DistillationLoss) and cls.needs and isinstance(cls.needs_teacher, bool)
