"""MobileNetV2 (Sandler et al. 2018) as a detectron2 backbone, under an FPN.

torchvision's own MobileNetV2 layers, cut where the stride doubles into a stem (stride 2) and
stages ``res2``..``res5`` (strides 4, 8, 16, 32), named as detectron2's ResNet stages at the same
strides so that its FPN builds p2..p6 from them exactly as from a ResNet, and every config that
names ResNet stages (``MODEL.FPN.IN_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT``) reads it unchanged.
torchvision's ImageNet weights load into it by name once converted (tools/convert_pretrained.py).
"""

from typing import Dict, Sequence

from torch import Tensor, nn
from torchvision.models import MobileNetV2 as TorchvisionMobileNetV2

from detectron2.config import CfgNode as CN
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

__all__ = [
    "STAGE_BLOCKS",
    "MobileNetV2",
    "add_mobilenet_v2_config",
    "build_mobilenet_v2_backbone",
    "build_mobilenet_v2_fpn_backbone",
]

# The blocks of torchvision's ``features`` in each stage; each stage halves the resolution.
# features.18, the 1x1 convolution to 1280 channels that feeds torchvision's classifier, is left
# out: it would quadruple res5's width, and the FPN's lateral convolution with it, for a student
# whose point is being small.
STAGE_BLOCKS: Dict[str, range] = {
    "stem": range(0, 2),
    "res2": range(2, 4),
    "res3": range(4, 7),
    "res4": range(7, 14),
    "res5": range(14, 18),
}


def add_mobilenet_v2_config(cfg: CN) -> None:
    """``MODEL.MOBILENET_V2``: which stages the backbone returns, and its normalisation. Freezing
    follows detectron2's ``MODEL.BACKBONE.FREEZE_AT`` (1: the stem, 2: also res2, ...)."""
    cfg.MODEL.MOBILENET_V2 = CN()
    cfg.MODEL.MOBILENET_V2.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # ImageNet statistics, frozen, as detectron2's pretrained ResNets: batches of a few large
    # images are too small for BatchNorm to estimate them again. "BN" or "SyncBN" to train them
    # (from random weights, where FrozenBN would diverge).
    cfg.MODEL.MOBILENET_V2.NORM = "FrozenBN"


class MobileNetV2(Backbone):
    """torchvision's MobileNetV2 ``features`` 0..17 as the stem and stages res2..res5."""

    def __init__(
        self,
        *,
        norm: str = "FrozenBN",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
    ):
        """
        Args:
            norm: a normalisation of detectron2's ``get_norm`` ("FrozenBN", "BN", "SyncBN", ...).
            out_features: the stages ``forward`` returns, of stem and res2..res5.
            freeze_at: the stem (1) and stages (2: res2, ...) whose weights are frozen, their
                BatchNorms made FrozenBatchNorm2d, as detectron2's ``ResNet.freeze``.
        """
        super().__init__()
        if not norm:
            raise ValueError(
                "MobileNetV2 needs a normalisation (its convolutions have no bias): FrozenBN, BN or SyncBN"
            )
        if not out_features or not set(out_features) <= set(STAGE_BLOCKS):
            raise ValueError(f"MobileNetV2 out_features must be among {list(STAGE_BLOCKS)}, got {list(out_features)}")
        features = TorchvisionMobileNetV2(norm_layer=lambda channels: get_norm(norm, channels)).features
        channels, strides = {}, {}
        for index, (name, blocks) in enumerate(STAGE_BLOCKS.items()):
            self.add_module(name, nn.Sequential(*(features[block] for block in blocks)))
            channels[name], strides[name] = features[blocks[-1]].out_channels, 2 ** (index + 1)
        self._out_features = list(out_features)
        self._out_feature_channels = {name: channels[name] for name in self._out_features}
        self._out_feature_strides = {name: strides[name] for name in self._out_features}
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        outputs = {}
        for name in STAGE_BLOCKS:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> "MobileNetV2":
        for index, name in enumerate(STAGE_BLOCKS, start=1):
            if freeze_at >= index:
                stage = getattr(self, name)
                for parameter in stage.parameters():
                    parameter.requires_grad = False
                self.add_module(name, FrozenBatchNorm2d.convert_frozen_batchnorm(stage))
        return self


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2:
    """MobileNetV2's ``MODEL.MOBILENET_V2.OUT_FEATURES``, norm ``MODEL.MOBILENET_V2.NORM``, stem and
    stages frozen up to ``MODEL.BACKBONE.FREEZE_AT``."""
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 reads 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels} values")
    node = cfg.MODEL.MOBILENET_V2
    return MobileNetV2(norm=node.NORM, out_features=node.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN on MobileNetV2, as ``build_resnet_fpn_backbone`` on a ResNet: p2..p6 at
    strides 4..64 from ``MODEL.FPN.IN_FEATURES`` (res2..res5), p6 by max-pooling p5."""
    return FPN(
        bottom_up=build_mobilenet_v2_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
