#!/usr/bin/env python
"""Training cost of distillation recipes: step time and peak memory against the student alone.

Every variant (the student alone, then each recipe) trains on the same pre-loaded batches in a
fresh child process: warm-up steps first, then the median of timed steps (forward, backward,
SGD step). The teacher's inference forward and its plain backbone+FPN forward (fp32,
contiguous) are timed the same way, and the table gives each recipe's extra time per step in
units of both. Parameters and FLOPs (fvcore, one image, inference) of teacher and student come
first. ``--teacher-precision`` / ``--teacher-channels-last`` add, for every recipe, a row with the
teacher run fast (KD.TEACHER.PRECISION / CHANNELS_LAST), its added time still counted in plain fp32
backbone forwards; ``--student-channels-last`` a row of the student alone in MODEL.CHANNELS_LAST.
``--image-size`` times random images of a real size, so VOC and COCO recipes need no data set.

    python tools/benchmark.py --student configs/shapes/student_slim_r8.yaml \
        --recipes configs/shapes/fitnet.yaml configs/shapes/chen2017.yaml
    python tools/benchmark.py ... --teacher-precision bf16 --teacher-channels-last
    python tools/benchmark.py --student configs/coco/student_R18.yaml --recipes configs/coco/chen2017.yaml \
        --image-size 800 1216 --batch-size 2 --output results/benchmark_cpu_800.md
    python tools/benchmark.py ... --device cuda --amp

``--inference`` measures deployment instead (:func:`benchmark_inference`): per-image latency (median
and 90th percentile) and images per second at batch 1 and 8, and peak memory, of the teacher, the
student in PyTorch, the student traced to TorchScript and the student in ONNX Runtime
(kddet/export.py), each in a fresh child process, on random images of each ``--inference-setting``'s
size, with random weights (timing does not depend on their values); the speed-ups over the teacher
come from the same run. ``--device cuda`` adds the teacher and the student in PyTorch under fp16
autocast.

    python tools/benchmark.py --inference --output results/benchmark_inference.md
"""

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._pytree import tree_leaves

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules (in every child too)

from kddet import load_config
from kddet.complexity import params_and_flops
from kddet.modeling.frozen_bn import measure_frozen_bn_statistics
from kddet.teacher import teacher_dtype

REPO = Path(__file__).resolve().parents[1]
# (teacher, student, height, width) of --inference: the embedded teacher with the slim student from
# scratch and with the MobileNetV2 student, and a COCO-sized pair.
INFERENCE_SETTINGS = [
    ("configs/shapes/teacher_slim_r18.yaml", "configs/shapes/student_slim_r8.yaml", 128, 128),
    ("configs/shapes/teacher_slim_r18.yaml", "configs/shapes/mobilenet_v2/student.yaml", 128, 128),
    ("configs/coco/teacher_R101.yaml", "configs/coco/student_mobilenet_v2.yaml", 800, 1216),
]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mb("VmHWM")  # peak RSS of this child (getrusage's would keep its parent's from before exec)


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 2**20


def measure_training(config: str, opts, batches_file: str, warmup: int, repeats: int, amp: bool, out) -> None:
    """Child process: median training-step time and peak memory of one config, its model built as
    the trainer builds it, and what distillation adds that is held through a step: the teacher's
    weights, the teacher's records the losses read, and the adapters with their gradients and
    momentum."""
    from detectron2.utils.events import EventStorage

    from kddet.engine import Trainer

    cfg = load_config(config, opts)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    held = {"teacher_mb": 0.0, "records_mb": 0.0, "adapters_mb": 0.0}
    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        held["teacher_mb"] = _tensor_mb([*teacher.parameters(), *teacher.buffers()])
        student_records = model._teacher_student_records

        def measured(*args):
            records = student_records(*args)
            held["records_mb"] = max(held["records_mb"], _tensor_mb(tree_leaves(records)))
            return records

        model._teacher_student_records = measured
    if hasattr(model, "kd_losses"):  # weights, gradients and SGD momentum
        held["adapters_mb"] = 3 * _tensor_mb(p for p in model.kd_losses.parameters() if p.requires_grad)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    batches = torch.load(batches_file, weights_only=False)
    measure_frozen_bn_statistics(
        model, batches[0]
    )  # random weights that do not diverge (the teacher's are in its file)
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with EventStorage():
        for step in range(warmup + repeats):
            batch = batches[step % len(batches)]
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device.split(":")[0], enabled=amp):
                loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    out.put({"step_s": statistics.median(times), "peak_mb": _peak_memory_mb(device), **held})


def measure_teacher_forward(config: str, opts, batches_file: str, warmup: int, repeats: int, amp: bool, out) -> None:
    """Child process: median inference forward of the teacher on the same batches."""
    from detectron2.modeling import build_model

    cfg = load_config(config, opts)
    model = build_model(cfg).eval()
    batches = torch.load(batches_file, weights_only=False)
    measure_frozen_bn_statistics(model, batches[0])
    device = cfg.MODEL.DEVICE
    times = []
    with torch.no_grad(), torch.autocast(device.split(":")[0], enabled=amp):
        for step in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(batches[step % len(batches)])
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    out.put({"step_s": statistics.median(times)})


def measure_teacher_backbone(config: str, opts, batches_file: str, warmup: int, repeats: int, out) -> None:
    """Child process: median forward of the teacher's backbone and FPN alone on the same batches'
    normalised images, in the precision and memory format of ``KD.TEACHER`` (as DistillationRCNN
    runs it)."""
    from detectron2.modeling import build_model

    cfg = load_config(config, opts)
    model = build_model(cfg).eval()
    batches = torch.load(batches_file, weights_only=False)
    measure_frozen_bn_statistics(model, batches[0])
    memory_format = torch.channels_last if cfg.KD.TEACHER.CHANNELS_LAST else torch.contiguous_format
    model.to(memory_format=memory_format)
    dtype = teacher_dtype(cfg)
    with torch.no_grad():
        images = [model.preprocess_image(batch).tensor.contiguous(memory_format=memory_format) for batch in batches]
    device = cfg.MODEL.DEVICE
    times = []
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        for step in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model.backbone(images[step % len(images)])
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    out.put({"step_s": statistics.median(times)})


def in_child(target, *args) -> dict:
    """Run ``target`` in a fresh process so that each variant's peak memory is its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def synthetic_batches(cfg, height: int, width: int, count: int, batch_size: int) -> list:
    """``count`` training batches of random ``height`` x ``width`` images (as the data loader gives
    them after its resize) with five random boxes each: cost at a real input size needs no data set."""
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(0)

    def image_dict() -> dict:
        corners = torch.rand(5, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        sizes = 32 + torch.rand(5, 2, generator=generator) * torch.tensor([width * 0.3 - 32, height * 0.3 - 32])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
        instances.gt_classes = torch.randint(cfg.MODEL.ROI_HEADS.NUM_CLASSES, (5,), generator=generator)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        return {"image": image, "instances": instances, "height": height, "width": width}

    return [[image_dict() for _ in range(batch_size)] for _ in range(count)]


def _quantile(values, q: float) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def measure_inference(
    variant: str,
    config: str,
    model_file: str,
    images_file: str,
    batch: int,
    warmup: int,
    repeats: int,
    threads: int,
    device: str,
    out,
) -> None:
    """Child process: the latencies of ``repeats`` calls on ``batch`` images after ``warmup`` calls, and
    the peak memory above the process's once the libraries are loaded. ``variant`` is pytorch (the
    config's model with the weights ``model_file``), pytorch-fp16 (the same under fp16 autocast),
    torchscript or onnx (``model_file`` an export)."""
    from detectron2.modeling import build_model

    from kddet.export import load_detector

    torch.set_num_threads(threads)
    images = [image.to(device) for image in torch.load(images_file)[:batch]]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    baseline = _proc_status_mb("VmRSS")
    if variant.startswith("pytorch"):
        model = build_model(load_config(config, ["MODEL.DEVICE", device]))
        model.load_state_dict(torch.load(model_file, map_location=device))
        detector = load_detector("pth", model.eval())
    else:
        detector = load_detector(variant, model_file, threads=threads, device=device)
    times = []
    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=variant == "pytorch-fp16"):
        for step in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            detector(images)
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    peak = _peak_memory_mb(device) if device.startswith("cuda") else _peak_memory_mb(device) - baseline
    out.put({"times": times, "peak_mb": peak})


def benchmark_inference(args) -> str:
    """The inference table of every ``--inference-setting``, as markdown."""
    from detectron2.modeling import build_model

    from kddet.export import export_model

    threads = args.threads or len(os.sched_getaffinity(0))
    cuda = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if cuda else f"a {os.cpu_count()}-core {platform.machine()} CPU"
    lines = [
        f"Measured on {machine}, device {args.device}"
        f"{'' if cuda else f', threads of torch and ONNX Runtime: {threads}'}; random weights "
        "(frozen BatchNorm statistics measured on the images); random images of the size given, already resized "
        "for test. Latency: one call on one image (normalise, pad, backbone, RPN, box head, score threshold and "
        f"NMS), median and 90th percentile of {args.repeats} calls after {args.warmup} warm-up; images/s: batch "
        f"size over the median call (at batch > 1, of {args.batch_repeats} calls after {args.warmup} warm-up). "
        "Peak memory: "
        + (
            "the largest GPU memory allocated by torch."
            if cuda
            else "the child process's largest resident set less its own once torch, detectron2 and kddet are loaded."
        )
        + " Speed-ups are ratios of the teacher's latency (images/s) in this same run.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for teacher_config, student_config, height, width in args.inference_setting:
            opts = ["MODEL.DEVICE", args.device]
            generator = torch.Generator().manual_seed(0)
            images = [
                torch.randint(0, 256, (3, height, width), generator=generator).float()
                for _ in range(max(args.batch_sizes))
            ]
            torch.save(images, f"{tmp}/images.pt")
            variants = []  # (name, kind, config, model file)
            for name, config in (("teacher", teacher_config), ("student", student_config)):
                torch.manual_seed(0)
                model = build_model(load_config(config, opts)).eval()
                measure_frozen_bn_statistics(model, [{"image": image.to(args.device)} for image in images[:2]])
                torch.save(model.state_dict(), f"{tmp}/{name}.pth")
                variants.append((f"{name}, PyTorch", "pytorch", config, f"{tmp}/{name}.pth"))
                student = model
                if cuda:
                    variants.append((f"{name}, PyTorch fp16 autocast", "pytorch-fp16", config, f"{tmp}/{name}.pth"))
            for format, title in (("torchscript", "TorchScript"), ("onnx", "ONNX Runtime")):
                exports = {
                    batch: export_model(
                        student,
                        [x.to(args.device) for x in images[:batch]],
                        Path(f"{tmp}/student_b{batch}.{format}"),
                        format,
                    )
                    for batch in args.batch_sizes
                }
                variants.append((f"student, {title}", format, student_config, exports))
            rows = []
            for name, kind, config, model_file in variants:
                runs = {}
                for batch in args.batch_sizes:
                    path = model_file[batch] if isinstance(model_file, dict) else model_file
                    repeats = args.repeats if batch == 1 else args.batch_repeats
                    timing = (f"{tmp}/images.pt", batch, args.warmup, repeats, threads, args.device)
                    runs[batch] = in_child(measure_inference, kind, config, str(path), *timing)
                    median_ms = 1000 * statistics.median(runs[batch]["times"])
                    print(f"{height}x{width} {name} batch {batch}: median {median_ms:.1f} ms", flush=True)
                rows.append((name, runs))
            lines += [
                "",
                f"### {_config_name(teacher_config)} and {_config_name(student_config)}, {height}x{width} images",
                "",
            ]
            lines += _inference_table(rows, args.batch_sizes, "peak GPU memory" if cuda else "peak memory")
    return "\n".join(lines)


def _config_name(config: str) -> str:
    """``shapes/mobilenet_v2/student`` for ``.../configs/shapes/mobilenet_v2/student.yaml``."""
    path = Path(config).with_suffix("")
    return "/".join(path.parts[path.parts.index("configs") + 1 :]) if "configs" in path.parts else path.name


def _inference_table(rows, batch_sizes, memory: str) -> list:
    first, *others = batch_sizes
    header = (
        ["model", "latency median (ms)", "latency p90 (ms)", "speed-up (latency)"]
        + [f"images/s, batch {b}" for b in batch_sizes]
        + [f"speed-up, batch {b}" for b in others]
        + [f"{memory}, batch {b} (MiB)" for b in batch_sizes]
    )
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    teacher = rows[0][1]
    per_second = lambda run, batch: batch / statistics.median(run[batch]["times"])  # noqa: E731
    for name, runs in rows:
        latency = statistics.median(runs[first]["times"]) / first
        cells = [
            f"{1000 * latency:.1f}",
            f"{1000 * _quantile(runs[first]['times'], 0.9) / first:.1f}",
            f"{statistics.median(teacher[first]['times']) / statistics.median(runs[first]['times']):.2f}",
        ]
        cells += [f"{per_second(runs, b):.2f}" for b in batch_sizes]
        cells += [f"{per_second(runs, b) / per_second(teacher, b):.2f}" for b in others]
        cells += [f"{runs[b]['peak_mb']:.0f}" for b in batch_sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="configs/shapes/student_slim_r8.yaml")
    parser.add_argument("--recipes", nargs="+", default=["configs/shapes/fitnet.yaml"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on cuda, bf16 on cpu)")
    parser.add_argument(
        "--teacher-precision",
        choices=["bf16", "fp16", "auto"],
        help="also run every recipe with this KD.TEACHER.PRECISION (a row each)",
    )
    parser.add_argument(
        "--teacher-channels-last",
        action="store_true",
        help="also run every recipe with KD.TEACHER.CHANNELS_LAST True (with --teacher-precision if given)",
    )
    parser.add_argument(
        "--student-channels-last", action="store_true", help="also run the student alone with MODEL.CHANNELS_LAST True"
    )
    parser.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="random images of this size (after resizing) instead of the student's training loader",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", help="also write the table to this markdown file, with the command that made it")
    parser.add_argument(
        "--inference", action="store_true", help="time inference of teacher and exported student instead"
    )
    parser.add_argument(
        "--inference-setting",
        nargs=4,
        action="append",
        metavar=("TEACHER", "STUDENT", "H", "W"),
        help="--inference: a teacher config, a student config and an image size (repeatable; default: "
        "the shapes teacher with either shapes student at 128x128 and the COCO pair at 800x1216)",
    )
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[1, 8], help="--inference: the first gives latency"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="--inference: CPU threads of torch and ONNX Runtime (default: all cores; on a "
        "shared machine 1, as threads that wait on a busy core stall a whole call)",
    )
    parser.add_argument("--batch-repeats", type=int, default=3, help="--inference: timed calls at batch sizes above 1")
    args = parser.parse_args()
    if args.inference:
        settings = args.inference_setting or INFERENCE_SETTINGS
        args.inference_setting = [(t, s, int(h), int(w)) for t, s, h, w in settings]
        if args.warmup == parser.get_default("warmup") and args.repeats == parser.get_default("repeats"):
            args.warmup, args.repeats = 3, 10  # TorchScript's profiling executor optimises on the second call
        table = benchmark_inference(args)
        print("\n" + table)
        if args.output:
            command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
            Path(args.output).write_text(
                f"# Inference of teacher and exported student, tools/benchmark.py on {args.device}\n\n"
                f"Generated by\n\n```\n{command}\n```\n\n{table}\n"
            )
        return

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model

    common = ["MODEL.DEVICE", args.device, "SOLVER.IMS_PER_BATCH", str(args.batch_size), "DATALOADER.NUM_WORKERS", "0"]
    student_cfg = load_config(args.student, common)
    teacher_config = load_config(args.recipes[0], common).KD.TEACHER.CONFIG_FILE
    with tempfile.TemporaryDirectory() as tmp:
        # Timing does not depend on the weights' values: a freshly built teacher stands in, its frozen
        # BatchNorm statistics measured so that nothing diverges (the batches come first for that).
        fast_teacher = ["KD.TEACHER.CHANNELS_LAST", "True"] if args.teacher_channels_last else []
        if args.teacher_precision:
            fast_teacher += ["KD.TEACHER.PRECISION", args.teacher_precision]
        teacher_opts = common + ["KD.TEACHER.WEIGHTS", f"{tmp}/teacher.pth"]
        count = min(4, args.warmup + args.repeats)
        if args.image_size:
            batches = synthetic_batches(student_cfg, *args.image_size, count, args.batch_size)
        else:
            loader = iter(build_detection_train_loader(student_cfg))
            batches = [next(loader) for _ in range(count)]
        batches_file = f"{tmp}/batches.pt"
        torch.save(batches, batches_file)
        teacher = build_model(load_config(teacher_config, common))
        measure_frozen_bn_statistics(teacher, batches[0])
        DetectionCheckpointer(teacher, save_dir=tmp).save("teacher")

        timing = (batches_file, args.warmup, args.repeats, args.amp)
        teacher_fwd = in_child(measure_teacher_forward, teacher_config, common, *timing)["step_s"]
        backbone_timing = (batches_file, args.warmup, args.repeats)
        backbone_fwd = in_child(measure_teacher_backbone, teacher_config, common, *backbone_timing)["step_s"]
        if fast_teacher:
            fast_fwd = in_child(measure_teacher_backbone, teacher_config, common + fast_teacher, *backbone_timing)[
                "step_s"
            ]
        rows = [("student alone", in_child(measure_training, args.student, common, *timing))]
        if args.student_channels_last:
            rows.append(
                (
                    "student alone, channels_last",
                    in_child(measure_training, args.student, common + ["MODEL.CHANNELS_LAST", "True"], *timing),
                )
            )
        for recipe in args.recipes:
            rows.append((Path(recipe).stem, in_child(measure_training, recipe, teacher_opts, *timing)))
            if fast_teacher:
                rows.append(
                    (
                        f"{Path(recipe).stem}, fast teacher",
                        in_child(measure_training, recipe, teacher_opts + fast_teacher, *timing),
                    )
                )
        image = batches[0][0]["image"]
        sizes = {
            "teacher": params_and_flops(load_config(teacher_config, common), image),
            "student": params_and_flops(student_cfg, image),
        }

    memory = "peak GPU memory (MiB)" if args.device.startswith("cuda") else "peak RSS (MiB)"
    height, width = image.shape[-2:]
    lines = [
        f"device {args.device}, AMP {'on' if args.amp else 'off'}, batch {args.batch_size} of {height}x{width} images, "
        f"median of {args.repeats} steps after {args.warmup} warm-up"
    ]
    for name, (params, gflops) in sizes.items():
        lines.append(f"{name}: {params:.2f} M parameters, {gflops:.2f} GFLOPs per image (inference)")
    lines.append(f"teacher inference forward: {1000 * teacher_fwd:.1f} ms per batch")
    lines.append(f"teacher backbone+FPN forward, fp32 contiguous: {1000 * backbone_fwd:.1f} ms per batch")
    if fast_teacher:
        lines.append(
            f"teacher backbone+FPN forward, {' '.join(fast_teacher)}: {1000 * fast_fwd:.1f} ms per batch "
            f"({backbone_fwd / fast_fwd:.2f}x faster); the rows *fast teacher* run it so"
        )
    lines += [
        "",
        "| variant | step (ms) | time / student | added, in teacher inference forwards | added, in fp32 teacher "
        f"backbone+FPN forwards | {memory} | memory / student | of which teacher weights | teacher records | "
        "adapters (with gradients, momentum) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows[0][1]
    for name, r in rows:
        added = r["step_s"] - base["step_s"]
        lines.append(
            f"| {name} | {1000 * r['step_s']:.1f} | {r['step_s'] / base['step_s']:.2f} | {added / teacher_fwd:.2f} | "
            f"{added / backbone_fwd:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f} | "
            f"{r['teacher_mb']:.0f} | {r['records_mb']:.0f} | {r['adapters_mb']:.1f} |"
        )
    print("\n" + "\n".join(lines))
    if args.output:
        command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
        Path(args.output).write_text(
            f"# tools/benchmark.py on {args.device}\n\nGenerated by\n\n```\n{command}\n```\n\n"
            + "\n".join(lines)
            + "\n"
        )


if __name__ == "__main__":
    main()
