"""kddet's additions to the detectron2 config.

The student is the ordinary ``MODEL.*`` of a config. The teacher is named by its own config
file and weights under ``KD.TEACHER``; nothing of detectron2's defaults is copied here.
``KD.LOSSES`` lists the distillation losses to switch on, by registered name; each loss reads
its own node ``KD.<NAME>`` (weight, the feature levels it reads, its options), whose defaults
the loss gives next to its code.
"""

import os
from typing import Any, Optional, Sequence, Tuple

import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.utils.file_io import PathManager

from .data.from_config import add_register_config, register_config_datasets
from .losses import KD_LOSS_REGISTRY
from .modeling.mobilenet_v2 import add_mobilenet_v2_config
from .modeling.slim_resnet import add_slim_resnet_config

__all__ = ["add_kddet_config", "load_config"]


def load_config(path: str, opts: Sequence = (), register_datasets: bool = True) -> CN:
    """detectron2's defaults with kddet's nodes, then the file at ``path``, then ``opts``
    (KEY VALUE ...); not frozen. The data sets of its ``DATASETS.REGISTER`` are registered unless
    ``register_datasets`` is False (a teacher's config: its data sets are never read).

    A relative ``KD.TEACHER.CONFIG_FILE`` written in a config file is resolved like its ``_BASE_``:
    against the folder of the file that sets it, where such a file exists (it is then given relative
    to the working directory, as detectron2's paths are); otherwise it stays as written, a path
    relative to the working directory or a detectron2 model-zoo name. So a recipe works from any
    directory. Given in ``opts``, it is relative to the working directory."""
    cfg = get_cfg()
    add_kddet_config(cfg)
    cfg.merge_from_file(str(path))
    setting = _file_setting(str(path), ("KD", "TEACHER", "CONFIG_FILE"))
    if setting is not None:
        cfg.KD.TEACHER.CONFIG_FILE = _resolve_against(*setting)
    cfg.merge_from_list(list(opts))
    if register_datasets:
        register_config_datasets(cfg)
    return cfg


def _file_setting(path: str, key: Tuple[str, ...]) -> Optional[Tuple[str, Any]]:
    """The file of ``path``'s ``_BASE_`` chain whose value of ``key`` the merged config holds (the
    file itself, else its last base that sets it, as detectron2 merges them), and that value."""
    with PathManager.open(path, "r") as f:
        loaded = yaml.safe_load(f) or {}
    node = loaded
    for part in key:
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None:
        return path, node
    bases = loaded.get("_BASE_") or []
    for base in reversed([bases] if isinstance(bases, str) else bases):
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)  # as detectron2 finds a _BASE_
        setting = _file_setting(base, key)
        if setting is not None:
            return setting
    return None


def _resolve_against(config_path: str, value: str) -> str:
    """``value``, a path written in the config file ``config_path``, relative to the working directory
    if it names a file relative to ``config_path``'s folder; otherwise as written."""
    if not value or os.path.isabs(value):
        return value
    beside = os.path.join(os.path.dirname(config_path), os.path.expanduser(value))
    return os.path.relpath(beside) if os.path.isfile(beside) else value


def add_kddet_config(cfg: CN) -> None:
    """Add kddet's config nodes to a detectron2 config, in place: the backbones' and the data sets'
    (each next to its code), the teacher's and balancing's, and the node ``KD.<NAME>`` of every
    registered loss, with the defaults its ``default_config`` gives."""
    add_slim_resnet_config(cfg)
    add_mobilenet_v2_config(cfg)
    add_register_config(cfg)

    # The student's weights and input in channels_last (NHWC) memory format: same values, another
    # layout, which some devices convolve faster (kddet/modeling/memory_format.py).
    cfg.MODEL.CHANNELS_LAST = False

    # The seed of the training data stream (image order and augmentations, kddet/data/fixed_stream.py);
    # -1: drawn from SEED, as detectron2 does. Set, runs of different SEEDs see the same stream.
    cfg.DATALOADER.SEED = -1

    cfg.KD = CN()
    cfg.KD.TEACHER = CN()
    cfg.KD.TEACHER.CONFIG_FILE = ""
    cfg.KD.TEACHER.WEIGHTS = ""
    # How the frozen teacher computes, whatever SOLVER.AMP does for the student: "fp32", or autocast
    # to "bf16" / "fp16", or "auto" (bf16 where the CPU or GPU has it, else fp16 on a GPU, else fp32).
    # Its records reach the losses in fp32 either way.
    cfg.KD.TEACHER.PRECISION = "fp32"
    cfg.KD.TEACHER.CHANNELS_LAST = False  # the teacher's weights and input in channels_last (NHWC)
    # Start the student's FPN and heads from the teacher's layers of the same names and shapes, its
    # feature extractor from MODEL.WEIGHTS (kddet/inherit.py); a resumed run is not copied into again.
    cfg.KD.TEACHER.INIT_STUDENT = False
    cfg.KD.LOSSES = []
    # Loss-scale balancing (kddet/balance.py): each loss is measured for ITERS iterations in which
    # it acts (zeroed meanwhile), then held at RATIO times the detector's own losses, whatever its
    # configured WEIGHT. LOSSES: the KD.LOSSES names to balance; empty balances all of them.
    cfg.KD.BALANCE = CN()
    cfg.KD.BALANCE.ENABLED = False
    cfg.KD.BALANCE.RATIO = 0.5
    cfg.KD.BALANCE.ITERS = 20
    cfg.KD.BALANCE.LOSSES = []

    for name, loss in KD_LOSS_REGISTRY:
        cfg.KD[name.upper()] = loss.default_config()
