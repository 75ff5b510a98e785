"""A trained student as a TorchScript or ONNX file, the check that the file detects what the PyTorch
student detects, and one predictor that runs any of the three on images.

The exported graph is detectron2's inference without its last step: it takes images already resized
for test (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), as float ``(3, H, W)`` tensors in
``INPUT.FORMAT``'s channel order with values 0-255, normalises and pads them itself, and returns for
each image its boxes (in the resized image's pixels), scores and classes after the score threshold and
NMS. :class:`Predictor` resizes before and scales the boxes to the original image after, for every
format the same way, as detectron2's ``DefaultPredictor`` does.

The graph is traced: detectron2's scripting path (``detectron2.export``) imports caffe2 at package
level, which today's torch no longer has. The ONNX file comes from the traced graph too
(``torch.onnx.export(..., dynamo=False)``): post-processing's NMS leaves tensors whose length depends on
the data, which the traced graph keeps dynamic. Every input's height and width are dynamic; the number
of images is the one the graph was exported with.
"""

import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Union
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.layers.wrappers import shapes_to_tensor
from detectron2.structures import Boxes, ImageList, Instances

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "BOX_TOLERANCE",
    "SCORE_TOLERANCE",
    "Detections",
    "ExportError",
    "ParityError",
    "TraceableDetector",
    "check_exportable",
    "export_model",
    "load_detector",
    "check_parity",
    "student_state",
    "image_files",
    "Predictor",
]

FORMATS = ("pth", "torchscript", "onnx")
SUFFIXES = {"pth": ".pth", "torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17  # every op of the graph (torchvision's nms and roi_align included) exists there
# Parity: an exported detection matches a PyTorch one of the same class whose box corners lie within
# BOX_TOLERANCE pixels and whose score within SCORE_TOLERANCE; float reorderings (ONNX Runtime's
# kernels) move boxes by about 1e-4 px at 800 px, a changed weight by far more.
BOX_TOLERANCE = 0.1
SCORE_TOLERANCE = 1e-3
DISTILLATION_PREFIXES = ("kd_losses.", "kd_balancer.")  # the losses' adapters, the balancer's scales


class Detections(NamedTuple):
    """One image's detections: ``boxes`` (N, 4) XYXY in the input image's pixels, ``scores`` (N,),
    ``classes`` (N,) contiguous class ids."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


class ExportError(RuntimeError):
    """The model, or one of its parts, cannot be exported to the format asked for."""


class ParityError(AssertionError):
    """The exported model's detections differ from the PyTorch model's beyond the tolerance."""


def student_state(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` entry of a detectron2 checkpoint without the distillation losses' parameters."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError("not a checkpoint saved by detectron2's DetectionCheckpointer (it has no 'model' entry)")
    return {k: v for k, v in checkpoint["model"].items() if not k.startswith(DISTILLATION_PREFIXES)}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_files(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """The image files among ``inputs``: files as given, folders' images (by suffix) sorted by name."""
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no image or folder {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return files


def _len_of(obj) -> Union[int, torch.Tensor]:
    return obj.__len__()


class TraceableDetector(nn.Module):
    """A GeneralizedRCNN's inference on tensors only: ``forward(*images)`` returns boxes, scores and
    classes of each image in turn (a flat tuple, three tensors per image)."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, *images: torch.Tensor):
        model = self.model
        # fast_rcnn splits the box predictions by len(proposals), a Python int the tracer would freeze;
        # Instances.__len__ gives the tensor's size, which stays dynamic in the graph.
        with (
            torch.no_grad(),
            mock.patch("detectron2.modeling.roi_heads.fast_rcnn.len", side_effect=_len_of, create=True),
        ):
            image_list = self._batch([(x.to(model.device) - model.pixel_mean) / model.pixel_std for x in images])
            features = model.backbone(image_list.tensor)
            proposals, _ = model.proposal_generator(image_list, features, None)
            results, _ = model.roi_heads(image_list, features, proposals, None)
        return tuple(t for r in results for t in (r.pred_boxes.tensor, r.scores, r.pred_classes))

    def _batch(self, images: List[torch.Tensor]) -> ImageList:
        """``ImageList.from_tensors`` by padding each image: its copy into slices of one batch tensor
        is lost by the ONNX exporter, which then folds the images into constants."""
        sizes = [shapes_to_tensor(image.shape[-2:]) for image in images]
        stride = max(self.model.backbone.size_divisibility, 1)
        max_size = (torch.stack(sizes).max(0).values + (stride - 1)) // stride * stride
        padded = [F.pad(x, [0, max_size[1] - size[1], 0, max_size[0] - size[0]]) for x, size in zip(images, sizes)]
        return ImageList(torch.stack(padded), sizes if torch.jit.is_tracing() else [tuple(map(int, s)) for s in sizes])


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` naming what keeps ``model`` from being exported: a model other than
    a plain GeneralizedRCNN, or heads whose outputs the exported graph does not carry."""
    if hasattr(model, "kd_losses"):
        raise ExportError(
            f"{type(model).__name__} is exported through its student: tools/export_student.py writes the plain "
            "student's weights and config, and with --format torchscript or onnx its traced graph"
        )
    if not isinstance(model, GeneralizedRCNN):
        raise ExportError(f"only GeneralizedRCNN detectors are exported, not {type(model).__name__}")
    for head in ("mask_on", "keypoint_on"):
        if getattr(model.roi_heads, head, False):
            raise ExportError(
                f"{type(model.roi_heads).__name__} has {head} True: only boxes, scores and classes are exported; "
                f"set MODEL.{head.upper()} False"
            )
    if model.proposal_generator is None:
        raise ExportError("a GeneralizedRCNN without a proposal generator (precomputed proposals) is not exported")


def export_model(model: GeneralizedRCNN, images: Sequence[torch.Tensor], path: Path, format: str) -> Path:
    """Trace ``model`` (eval mode) on ``images`` (resized float (3, H, W) tensors; their number is the
    graph's batch size) and write it to ``path`` as ``format`` ('torchscript' or 'onnx')."""
    check_exportable(model)
    if format not in ("torchscript", "onnx"):
        raise ExportError(f"format {format!r}: choose torchscript or onnx ({FORMATS[0]} needs no export)")
    model.eval()
    detector = TraceableDetector(model).eval()
    images = tuple(images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The tracer warns at every shape check of detectron2's Python code: expected, and harmless
        # because the graph is checked against the PyTorch model (check_parity) after export.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
        try:
            if format == "torchscript":
                torch.jit.trace(detector, images, check_trace=False).save(str(path))
            else:
                _export_onnx(detector, images, path)
        except ExportError:
            raise
        except Exception as e:  # torch names the operator or Python construct it could not export
            raise ExportError(
                f"{type(model).__name__} could not be exported to {format}: {type(e).__name__}: {e}"
            ) from e
    return path


def _export_onnx(detector: TraceableDetector, images: tuple, path: Path) -> None:
    inputs = [f"image{i}" for i in range(len(images))]
    outputs = [f"{name}{i}" for i in range(len(images)) for name in ("boxes", "scores", "classes")]
    dynamic_axes = {name: {1: f"height{i}", 2: f"width{i}"} for i, name in enumerate(inputs)}
    dynamic_axes.update(
        {f"{name}{i}": {0: f"detections{i}"} for i in range(len(images)) for name in ("boxes", "scores", "classes")}
    )
    torch.onnx.export(
        detector,
        images,
        str(path),
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic_axes,
    )


def _grouped(outputs: Sequence) -> List[Detections]:
    outputs = [torch.as_tensor(t) for t in outputs]
    return [Detections(*outputs[i : i + 3]) for i in range(0, len(outputs), 3)]


class _PyTorchDetector:
    def __init__(self, model: GeneralizedRCNN):
        self.model = TraceableDetector(model.eval())
        self.batch_size = None

    def __call__(self, images: Sequence[torch.Tensor]) -> List[Detections]:
        return _grouped(self.model(*images))


class _TorchScriptDetector:
    def __init__(self, path: Path, device: str = "cpu"):
        self.model = torch.jit.load(str(path), map_location=device)
        self.batch_size = len(list(self.model.graph.inputs())) - 1  # the first input is the module itself

    def __call__(self, images: Sequence[torch.Tensor]) -> List[Detections]:
        with torch.no_grad():
            return _grouped(self.model(*images))


class _OnnxDetector:
    def __init__(self, path: Path, threads: int = 0, providers: Optional[List[str]] = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.batch_size = len(self.inputs)

    def __call__(self, images: Sequence[torch.Tensor]) -> List[Detections]:
        feed = {name: image.detach().cpu().numpy() for name, image in zip(self.inputs, images)}
        return _grouped(self.session.run(None, feed))


def load_detector(format: str, model_or_path: Union[GeneralizedRCNN, str, Path], threads: int = 0, device: str = "cpu"):
    """A callable from a list of resized images to their :class:`Detections`: the PyTorch ``model``
    ('pth'), a TorchScript file or an ONNX file run by onnxruntime. Its ``batch_size`` is the number of
    images an exported graph takes (None: any)."""
    if format == "pth":
        return _PyTorchDetector(model_or_path)
    if not Path(model_or_path).is_file():
        raise FileNotFoundError(
            f"no {format} file {model_or_path}: write it with tools/export_student.py --format {format}"
        )
    if format == "torchscript":
        return _TorchScriptDetector(Path(model_or_path), device)
    if format == "onnx":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        return _OnnxDetector(Path(model_or_path), threads, providers)
    raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}")


def _match(expected: Detections, got: Detections, box_tolerance: float, score_tolerance: float) -> Optional[str]:
    """None if every detection of ``expected`` has its own counterpart in ``got`` (same class, box and
    score within the tolerances; order free, as near-equal scores may swap) and the counts agree; else
    what differs."""
    if len(expected.scores) != len(got.scores):
        return f"{len(got.scores)} detections against the PyTorch model's {len(expected.scores)}"
    free = torch.ones(len(got.scores), dtype=torch.bool)
    got_boxes, got_scores = got.boxes.float(), got.scores.float()
    for box, score, cls in zip(expected.boxes.float(), expected.scores.float(), expected.classes):
        box_error = (got_boxes - box).abs().amax(dim=1) if len(got_boxes) else got_boxes.new_zeros(0)
        score_error = (got_scores - score).abs()
        candidates = free & (got.classes == cls) & (box_error <= box_tolerance) & (score_error <= score_tolerance)
        if not candidates.any():
            nearest = int(torch.where(got.classes == cls, box_error, torch.inf).argmin()) if len(got_boxes) else None
            where = (
                "none"
                if nearest is None or not torch.isfinite(box_error[nearest])
                else (f"nearest of that class is {got_boxes[nearest].tolist()} score {got_scores[nearest]:.4f}")
            )
            return f"no counterpart for class {int(cls)} box {box.tolist()} score {score:.4f} ({where})"
        free[torch.where(candidates, box_error, torch.inf).argmin()] = False
    return None


def check_parity(
    reference,
    exported,
    images: Sequence[torch.Tensor],
    box_tolerance: float = BOX_TOLERANCE,
    score_tolerance: float = SCORE_TOLERANCE,
) -> int:
    """Run the ``reference`` and ``exported`` detectors (:func:`load_detector`) on ``images`` (in the
    exported graph's batch size) and raise :class:`ParityError` at the first image whose detections
    differ; return how many detections were compared."""
    batch = exported.batch_size or 1
    compared = 0
    for start in range(0, len(images) - batch + 1, batch):
        chunk = list(images[start : start + batch])
        for offset, (expected, got) in enumerate(zip(reference(chunk), exported(chunk))):
            mismatch = _match(expected, got, box_tolerance, score_tolerance)
            if mismatch:
                raise ParityError(
                    f"image {start + offset}: {mismatch} (tolerance {box_tolerance} px on box corners, "
                    f"{score_tolerance} on scores, classes equal)"
                )
            compared += len(expected.scores)
    return compared


class Predictor:
    """Detections on original images with a model of any format, the way detectron2's
    ``DefaultPredictor`` makes them: resize for test, run, scale the boxes back to the image.

    ``predictor(images)`` takes HxWxC uint8 arrays in ``cfg.INPUT.FORMAT`` (as
    ``detectron2.data.detection_utils.read_image(path, format=cfg.INPUT.FORMAT)`` reads them) and returns
    one ``Instances`` (pred_boxes, scores, pred_classes) per image at its original size.
    """

    def __init__(self, cfg: CfgNode, detector):
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.detector = detector

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        resized = self.resize.get_transform(image).apply_image(image)
        return torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))

    def __call__(self, images: Sequence[np.ndarray]) -> List[Instances]:
        tensors = [self.preprocess(image) for image in images]
        results = []
        for image, tensor, detections in zip(images, tensors, self.detector(tensors)):
            instances = Instances(tuple(tensor.shape[-2:]))
            instances.pred_boxes = Boxes(detections.boxes.float())
            instances.scores = detections.scores.float()
            instances.pred_classes = detections.classes.long()
            results.append(detector_postprocess(instances, *image.shape[:2]))
        return results
