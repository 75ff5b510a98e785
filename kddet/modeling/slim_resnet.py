"""A ResNet of basic blocks whose stage widths and depths are free, under an FPN.

detectron2's R18/R34 fix the widths at 64..512 and the depths at (2,2,2,2)/(3,4,6,3); the
embedded data set needs teachers and students small enough to train on a laptop CPU, with a
clear capacity gap between them. Built from detectron2's own stem, blocks and FPN.
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

__all__ = ["add_slim_resnet_config", "build_slim_resnet_fpn_backbone"]


def add_slim_resnet_config(cfg: CfgNode) -> None:
    """``MODEL.SLIM_RESNET``: the stage widths and depths of the backbone below."""
    cfg.MODEL.SLIM_RESNET = CfgNode()
    cfg.MODEL.SLIM_RESNET.STAGE_CHANNELS = [64, 128, 256, 512]
    cfg.MODEL.SLIM_RESNET.BLOCKS_PER_STAGE = [2, 2, 2, 2]


@BACKBONE_REGISTRY.register()
def build_slim_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """res2..res5 of ``MODEL.SLIM_RESNET.BLOCKS_PER_STAGE`` basic blocks each, widths
    ``MODEL.SLIM_RESNET.STAGE_CHANNELS``, norm ``MODEL.RESNETS.NORM``, then detectron2's FPN."""
    norm = cfg.MODEL.RESNETS.NORM
    widths = cfg.MODEL.SLIM_RESNET.STAGE_CHANNELS
    depths = cfg.MODEL.SLIM_RESNET.BLOCKS_PER_STAGE
    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(
            "MODEL.SLIM_RESNET.STAGE_CHANNELS and BLOCKS_PER_STAGE need 4 entries (res2..res5), "
            f"got {list(widths)} and {list(depths)}"
        )
    stem = BasicStem(in_channels=input_shape.channels, out_channels=widths[0], norm=norm)
    stages, in_channels = [], widths[0]
    for index, (width, depth) in enumerate(zip(widths, depths)):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                depth,
                in_channels=in_channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (depth - 1),
                norm=norm,
            )
        )
        in_channels = width
    bottom_up = ResNet(
        stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
