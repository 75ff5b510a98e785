"""kddet.modeling.frozen_bn: a random FrozenBN network's statistics, measured layer after layer,
normalise what each frozen BatchNorm sees; a network with trainable BatchNorm is left alone."""

import torch

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from conftest import REPO, STUDENT_CONFIG, load_config
from kddet.modeling.frozen_bn import measure_frozen_bn_statistics


def test_every_frozen_batchnorm_normalises_its_input_after_measuring():
    torch.manual_seed(0)
    model = build_model(load_config(REPO / "configs/coco/student_R18.yaml", "MODEL.DEVICE", "cpu")).eval()
    batch = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float()}]
    measure_frozen_bn_statistics(model, batch)

    outputs = []
    frozen = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    # A clone: the blocks apply ReLU to the output in place.
    hooks = [m.register_forward_hook(lambda m, i, out: outputs.append((i[0], out.clone(), m))) for m in frozen]
    with torch.no_grad():
        model.backbone(model.preprocess_image(batch).tensor)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(frozen) == 20  # the stem, 16 block convolutions, 3 shortcuts
    for x, out, module in outputs:  # (out - bias) / weight is the input standardised per channel
        standardised = (out - module.bias[:, None, None]) / module.weight[:, None, None]
        torch.testing.assert_close(standardised.mean(dim=(0, 2, 3)), torch.zeros(x.shape[1]), atol=1e-3, rtol=0)
        torch.testing.assert_close(standardised.var(dim=(0, 2, 3)), torch.ones(x.shape[1]), atol=1e-2, rtol=1e-2)


def test_a_network_without_frozen_batchnorm_is_left_as_it_is():
    model = build_model(load_config(STUDENT_CONFIG, "MODEL.DEVICE", "cpu")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_frozen_bn_statistics(model, [{"image": torch.rand(3, 64, 64) * 255}])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
