"""MODEL.CHANNELS_LAST: the student in channels_last computes what the contiguous student computes
(losses, gradients, predictions), alone and distilled; only the memory layout differs."""

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_config
from kddet.engine import Trainer
from test_meta_arch import train_batches

FITNET = REPO / "configs/shapes/fitnet.yaml"


@pytest.fixture(scope="module")
def batch(datasets_root):
    np.random.seed(0)
    return next(train_batches(load_config(STUDENT_CONFIG), DatasetCatalog.get("kddet_shapes_train")[:2], 1))


def losses_grads_and_predictions(config, batch, *opts, proposals=None):
    """The model's losses, gradients and predictions on ``batch``, and the RPN proposals it made for
    training and for inference. ``proposals`` (another run's) replace its own at the box head: where
    rounding alone moves an untrained RPN's near-tied scores, top-k and NMS keep a few other boxes,
    and the box head would compare other RoIs."""
    torch.manual_seed(0)
    # Every box kept, so that an untrained student has predictions to compare.
    model = Trainer.build_model(load_config(config, *opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).train()
    own_proposals = []

    def swap_proposals(_, args):
        own_proposals.append(args[2])
        if proposals is not None:
            return (*args[:2], proposals[len(own_proposals) - 1], *args[3:])

    model.roi_heads.register_forward_pre_hook(swap_proposals)
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        predictions = [x["instances"] for x in model(batch)]
    return model, losses, grads, predictions, own_proposals


@pytest.mark.parametrize("config", [STUDENT_CONFIG, FITNET], ids=["student alone", "fitnet"])
def test_channels_last_student_computes_what_the_contiguous_one_does(config, batch, teacher_weights):
    teacher = ["KD.TEACHER.CONFIG_FILE", str(TEACHER_CONFIG), "KD.TEACHER.WEIGHTS", str(teacher_weights)]
    opts = teacher if config == FITNET else []
    _, losses, grads, predictions, proposals = losses_grads_and_predictions(config, batch, *opts)
    model, fast_losses, fast_grads, fast_predictions, fast_proposals = losses_grads_and_predictions(
        config, batch, *opts, "MODEL.CHANNELS_LAST", True, proposals=proposals
    )

    # The RPN's own proposals agree but for the few near-ties that rounding flips.
    for fast, plain in zip(sum(fast_proposals, []), sum(proposals, [])):
        same = (fast.proposal_boxes.tensor - plain.proposal_boxes.tensor).abs().amax(dim=1) < 1e-2
        assert len(fast) == len(plain) and same.float().mean() > 0.95

    conv = model.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert losses.keys() == fast_losses.keys() and grads.keys() == fast_grads.keys()
    for name in losses:  # fp32 sums in another order: rounding only
        torch.testing.assert_close(fast_losses[name], losses[name], rtol=1e-4, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-3, atol=1e-5)
    assert sum(len(p) for p in predictions) > 0
    for fast, plain in zip(fast_predictions, predictions):
        torch.testing.assert_close(fast.pred_boxes.tensor, plain.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-4, atol=1e-5)
