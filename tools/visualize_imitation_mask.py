#!/usr/bin/env python
"""Show FGFI's imitation masks: for the first N images of a data set, one PNG each with a panel
per anchored level (the image, its GT boxes, and the locations FGFI imitates shaded).

    python tools/visualize_imitation_mask.py --config-file configs/shapes/fgfi.yaml --num-images 8
    python tools/visualize_imitation_mask.py --config-file configs/voc/Base-Distill.yaml \\
        --dataset voc_2007_trainval --output output/masks/voc KD.FGFI.MAX_IOU_PER_LEVEL True

The masks come from the student config's backbone and anchor generator and its KD.FGFI options;
no teacher and no weights are needed. Images are resized as at test time, without flips.
"""

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

import argparse
import math
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.modeling import build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator

from kddet import load_config
from kddet.losses.fgfi import imitation_masks

MASK_COLOR = np.array([255, 64, 0], dtype=np.float32)  # RGB
BOX_COLOR = (0, 255, 0)
MIN_PANEL_HEIGHT = 256  # small images are enlarged so that a stride-4 cell stays visible


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the student's (or a recipe's) config")
    parser.add_argument("--dataset", default="kddet_shapes_train", help="a registered data set with boxes")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--output", default="output/imitation_masks", help="folder for the PNGs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return parser.parse_args(argv)


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


class MaskDrawer:
    """Computes one image's masks with the config's anchors and draws them, a panel per level."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.backbone = build_backbone(cfg).eval()  # only for the sizes of its feature maps
        self.levels = list(cfg.MODEL.RPN.IN_FEATURES)
        shapes = self.backbone.output_shape()
        self.anchor_generator = build_anchor_generator(cfg, [shapes[f] for f in self.levels])
        self._grid_sizes: Dict[tuple, List[tuple]] = {}

    def grid_sizes(self, image_size: tuple) -> List[tuple]:
        """(H, W) of each anchored level for an image of ``image_size``, padded as the model pads."""
        divisor = max(self.backbone.size_divisibility, 1)
        padded = tuple(math.ceil(s / divisor) * divisor for s in image_size)
        if padded not in self._grid_sizes:
            with torch.no_grad():
                features = self.backbone(torch.zeros(1, 3, *padded))
            self._grid_sizes[padded] = [tuple(features[f].shape[-2:]) for f in self.levels]
        return self._grid_sizes[padded]

    def masks(self, gt_boxes, image_size: tuple) -> List[torch.Tensor]:
        grid_sizes = self.grid_sizes(image_size)
        anchors = self.anchor_generator([torch.zeros(1, 1, *hw) for hw in grid_sizes])
        fgfi = self.cfg.KD.FGFI
        return imitation_masks(gt_boxes, anchors, grid_sizes, image_size, fgfi.PSI, fgfi.MAX_IOU_PER_LEVEL)

    def draw(self, image_rgb: np.ndarray, gt_boxes, masks: List[torch.Tensor]) -> np.ndarray:
        """The panels side by side: each pixel shaded when the location whose anchors are centred
        nearest to it is imitated."""
        height, width = image_rgb.shape[:2]
        scale = max(1, MIN_PANEL_HEIGHT // height)
        panels = []
        for level, mask, stride in zip(self.levels, masks, self.anchor_generator.strides):
            first_center = self.anchor_generator.offset * stride
            rows = np.clip(np.round((np.arange(height) - first_center) / stride).astype(int), 0, mask.shape[0] - 1)
            cols = np.clip(np.round((np.arange(width) - first_center) / stride).astype(int), 0, mask.shape[1] - 1)
            shaded = mask.numpy()[rows][:, cols]
            panel = image_rgb.astype(np.float32)
            panel[shaded] = 0.45 * panel[shaded] + 0.55 * MASK_COLOR
            panel = cv2.resize(panel.astype(np.uint8), (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
            for x0, y0, x1, y1 in (gt_boxes.tensor.numpy() * scale).round().astype(int):
                cv2.rectangle(panel, (x0, y0), (x1, y1), BOX_COLOR, 1)
            label = f"{level}: {int(mask.sum())} of {mask.numel()}"
            cv2.putText(panel, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            panels.append(panel)
        gap = np.full((height * scale, 4, 3), 255, dtype=np.uint8)
        return np.concatenate([x for panel in panels for x in (panel, gap)][:-1], axis=1)


def main(args: argparse.Namespace) -> List[Path]:
    """Write the PNGs; return their paths."""
    cfg = setup_cfg(args)
    test_resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    mapper = DatasetMapper(cfg, is_train=True, augmentations=[test_resize])  # is_train keeps the boxes
    drawer = MaskDrawer(cfg)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(args.dataset)[: args.num_images]:
        mapped = mapper(record)
        image = convert_image_to_rgb(mapped["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
        gt_boxes = mapped["instances"].gt_boxes
        picture = drawer.draw(image, gt_boxes, drawer.masks(gt_boxes, tuple(image.shape[:2])))
        path = output / f"{Path(record['file_name']).stem}_fgfi_mask.png"
        cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        written.append(path)
        print(path)
    return written


if __name__ == "__main__":
    main(parse_args())
