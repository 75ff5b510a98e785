"""Build the frozen teacher from its own config file and weights, and check it fits the student."""

import logging
import os
from collections import Counter
from typing import Any, Dict, List

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import GeneralizedRCNN, build_model

from .config import load_config
from .model_zoo import config_file, download, is_url

__all__ = [
    "load_teacher_config",
    "build_teacher",
    "teacher_dtype",
    "check_same_anchors",
    "check_teacher_matches_student",
]

logger = logging.getLogger(__name__)


def load_teacher_config(cfg: CfgNode) -> CfgNode:
    """The teacher's own config (``KD.TEACHER.CONFIG_FILE``), on the student's device."""
    path = cfg.KD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError(
            "KD.LOSSES needs a teacher, but KD.TEACHER.CONFIG_FILE is empty: set it to the teacher's config file."
        )
    resolved = config_file(path)
    if resolved is None:
        raise FileNotFoundError(
            f"Teacher config file not found: {os.path.abspath(path)}, and detectron2's model zoo has no config of that "
            "name. Set KD.TEACHER.CONFIG_FILE to the config the teacher was trained with, or to a model-zoo name "
            "(e.g. COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml)."
        )
    teacher_cfg = load_config(resolved, register_datasets=False)  # the student's data sets are the ones used
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = cfg.KD.TEACHER.WEIGHTS
    return teacher_cfg


_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(cfg: CfgNode) -> torch.dtype:
    """The dtype the teacher computes in on ``MODEL.DEVICE``, as ``KD.TEACHER.PRECISION`` names it."""
    precision = cfg.KD.TEACHER.PRECISION
    if precision == "auto":
        return _fastest_dtype(torch.device(cfg.MODEL.DEVICE))
    if precision not in _PRECISIONS:
        raise ValueError(f"KD.TEACHER.PRECISION is '{precision}'; use one of {[*_PRECISIONS, 'auto']}.")
    return _PRECISIONS[precision]


def _fastest_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device has bf16 arithmetic (its range is fp32's), else fp16 on a GPU, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    cpu = torch.cpu.get_capabilities()
    if device.type == "cpu" and (cpu.get("avx512_bf16") or cpu.get("amx_bf16")):
        return torch.bfloat16
    return torch.float32


def build_teacher(cfg: CfgNode, load_weights: bool = True) -> GeneralizedRCNN:
    """Build the teacher, load its weights strictly, freeze it and put it in eval mode; with
    ``KD.TEACHER.CHANNELS_LAST``, its weights in channels_last; with a ``KD.TEACHER.PRECISION`` below
    fp32, its convolution and linear weights held in that precision, so that it runs under autocast
    in that precision only (as DistillationRCNN runs it).

    ``load_weights=False`` leaves it randomly initialised: the dry run (``tools/train_net.py
    --check``) checks the rest of a recipe with it when the weights are missing.
    """
    teacher_cfg = load_teacher_config(cfg)
    weights = teacher_cfg.MODEL.WEIGHTS
    local_file = _local_weights(weights) if load_weights else None
    if teacher_cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ValueError(
            f"The teacher config {cfg.KD.TEACHER.CONFIG_FILE} builds a {teacher_cfg.MODEL.META_ARCHITECTURE}; "
            "a teacher must be a plain GeneralizedRCNN (Faster R-CNN) config."
        )
    teacher = build_model(teacher_cfg)
    if load_weights:
        _load_strictly(teacher, local_file)
    teacher.eval()
    teacher.requires_grad_(False)
    if cfg.KD.TEACHER.CHANNELS_LAST:
        teacher.to(memory_format=torch.channels_last)  # the values are unchanged: only their order in memory
    check_teacher_matches_student(teacher_cfg, cfg)
    dtype = teacher_dtype(cfg)
    if dtype != torch.float32 and not cfg.KD.TEACHER.INIT_STUDENT:
        _hold_weights_in(teacher, dtype)
    if load_weights:
        parameters = sum(p.numel() for p in teacher.parameters())
        logger.info(
            "Loaded teacher %s from %s (%.2f M parameters); it computes in %s%s",
            cfg.KD.TEACHER.CONFIG_FILE,
            weights,
            parameters / 1e6,
            str(dtype).removeprefix("torch."),
            ", channels_last" if cfg.KD.TEACHER.CHANNELS_LAST else "",
        )
    return teacher


def _hold_weights_in(teacher: nn.Module, dtype: torch.dtype) -> None:
    """Keep the teacher's convolution and linear weights in ``dtype``, the precision it computes in:
    autocast would cast them to it at every call, so the values are the same and the memory halves.
    Normalisation statistics stay fp32, as autocast leaves them. Not done when the student inherits
    the teacher's weights (KD.TEACHER.INIT_STUDENT), which it copies at full precision."""
    for module in teacher.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            for parameter in module.parameters(recurse=False):
                parameter.data = parameter.data.to(dtype)


_MISSING_WEIGHTS = (
    "Teacher weights not found: '{weights}'. Set KD.TEACHER.WEIGHTS to the teacher's checkpoint (e.g. "
    "output/teacher/model_final.pth from tools/train_net.py, or a model-zoo detectron2://.../model_final_*.pkl)."
)


def _local_weights(weights: str) -> str:
    """The teacher checkpoint's local file: ``weights``, or its download from the model zoo."""
    if is_url(weights):
        return download(weights, "KD.TEACHER.WEIGHTS")
    if not os.path.isfile(weights):
        raise FileNotFoundError(_MISSING_WEIGHTS.format(weights=weights))
    return weights


def _load_strictly(teacher: nn.Module, weights: str) -> None:
    """Load every tensor of ``teacher`` from the local file ``weights``. DetectionCheckpointer reads
    detectron2's .pth and model-zoo .pkl files (numpy arrays; renamed by its matching heuristics
    where the file asks for them, Detectron/Caffe2 names always); a tensor of the teacher that
    is still missing, or of another shape, afterwards is an error."""
    checkpointer = DetectionCheckpointer(teacher)
    try:
        checkpoint = checkpointer._load_file(weights)
    except Exception as e:
        # torch.load's own message on a damaged file suggests weights_only=False: not the fix here.
        raise ValueError(
            f"Cannot read teacher weights {weights}: it is not a checkpoint detectron2 can load "
            f"({type(e).__name__}, see the error above). Set KD.TEACHER.WEIGHTS to the teacher's "
            "model_final.pth from tools/train_net.py or a detectron2 model-zoo .pkl."
        ) from e
    checkpointer._convert_ndarray_to_tensor(checkpoint.get("model", checkpoint))
    incompatible = checkpointer._load_model(checkpoint)
    mis_shaped = {k: (tuple(in_file), tuple(in_model)) for k, in_file, in_model in incompatible.incorrect_shapes}
    # fvcore lists mis-shaped keys as missing too
    missing = [k for k in incompatible.missing_keys if k not in mis_shaped]
    if missing or mis_shaped:
        examples = [f"{k}: {f} in the file, {m} in the config" for k, (f, m) in list(mis_shaped.items())[:3]]
        raise ValueError(
            f"Teacher weights {weights} do not fit the teacher config: of its {len(teacher.state_dict())} tensors, "
            f"{len(missing)} are missing from the file (e.g. {missing[:3]}) and {len(mis_shaped)} have another "
            f"shape (e.g. {examples}). Use the config file the teacher was trained with."
        )
    if incompatible.unexpected_keys:
        logger.warning(_unexpected_keys_message(weights, incompatible.unexpected_keys))


def _unexpected_keys_message(weights: str, keys: List[str]) -> str:
    """What the tensors of a teacher checkpoint that the teacher has no place for are, by prefix; they
    are not loaded. ``kd_losses.*`` are the adapters of a distilled run: the file is a distilled
    student, whose detector weights load as a teacher like any other."""
    groups = Counter(key.split(".")[0] for key in keys)
    described = [
        f"{prefix}.* ({count} tensors{', the adapters of a distilled run' if prefix == 'kd_losses' else ''})"
        for prefix, count in sorted(groups.items())
    ]
    return (
        f"Teacher weights {weights} hold {len(keys)} tensors the teacher config has no place for; they were "
        f"ignored: {', '.join(described)}. The teacher's own tensors all loaded."
    )


def check_teacher_matches_student(teacher_cfg: CfgNode, cfg: CfgNode) -> None:
    """Classes, padding and input channels must agree for the two networks to see the same batch."""
    pairs = {
        "MODEL.ROI_HEADS.NUM_CLASSES": (teacher_cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_HEADS.NUM_CLASSES),
        "MODEL.PIXEL_MEAN length": (len(teacher_cfg.MODEL.PIXEL_MEAN), len(cfg.MODEL.PIXEL_MEAN)),
    }
    for key, (teacher_value, student_value) in pairs.items():
        if teacher_value != student_value:
            raise ValueError(
                f"Teacher and student disagree on {key}: teacher {teacher_value}, student {student_value}. "
                "Distil between detectors of the same label space and input."
            )
    formats = {teacher_cfg.INPUT.FORMAT, cfg.INPUT.FORMAT}
    if len(formats) > 1 and formats != {"RGB", "BGR"}:
        raise ValueError(
            f"Teacher input format {teacher_cfg.INPUT.FORMAT} cannot be made from the student's {cfg.INPUT.FORMAT}."
        )


def _anchor_settings(rpn: nn.Module) -> Dict[str, Any]:
    """The RPN's anchor settings as config keys, read back from its built cell anchors (generated
    for each size, then each aspect ratio), so the message names what to change."""
    generator = rpn.anchor_generator
    sizes, ratios = [], []
    for cell in generator.cell_anchors:
        widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        sizes.append(list(dict.fromkeys(round(float(s), 2) for s in (widths * heights).sqrt())))
        ratios.append(list(dict.fromkeys(round(float(r), 2) for r in heights / widths)))
    return {
        "MODEL.RPN.IN_FEATURES": list(rpn.in_features),
        "strides": list(generator.strides),
        "MODEL.ANCHOR_GENERATOR.SIZES": sizes,
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": ratios,
        "MODEL.ANCHOR_GENERATOR.OFFSET": generator.offset,
    }


def check_same_anchors(student_rpn: nn.Module, teacher_rpn: nn.Module) -> None:
    """Stop unless the teacher's RPN has the student's anchors, in the same order: its outputs are
    read at the student's anchors, row for row."""
    student_cells, teacher_cells = student_rpn.anchor_generator.cell_anchors, teacher_rpn.anchor_generator.cell_anchors
    same_cells = len(student_cells) == len(teacher_cells) and all(
        s.shape == t.shape and torch.equal(s.cpu(), t.cpu()) for s, t in zip(student_cells, teacher_cells)
    )
    if not same_cells or _anchor_settings(student_rpn) != _anchor_settings(teacher_rpn):
        raise ValueError(
            "A loss in KD.LOSSES reads the teacher's RPN at the student's anchors, but their anchors differ.\n"
            f"  student: {_anchor_settings(student_rpn)}\n"
            f"  teacher: {_anchor_settings(teacher_rpn)}\n"
            "Give the teacher and the student the same MODEL.ANCHOR_GENERATOR and MODEL.RPN.IN_FEATURES."
        )
