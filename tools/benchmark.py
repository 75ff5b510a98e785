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
    python tools/benchmark.py --student configs/coco/student_R18.yaml --recipes configs/coco/fitnet.yaml \
        --image-size 800 1216 --batch-size 2 --output results/benchmark_cpu_800.md
    python tools/benchmark.py ... --device cuda --amp
"""
import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules (in every child too)

from kddet import load_config
from kddet.complexity import params_and_flops
from kddet.modeling.frozen_bn import measure_frozen_bn_statistics
from kddet.teacher import teacher_dtype

REPO = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of this child


def measure_training(config: str, opts, batches_file: str, warmup: int, repeats: int, amp: bool, out) -> None:
    """Child process: median training-step time and peak memory of one config, its model built as
    the trainer builds it."""
    from detectron2.utils.events import EventStorage

    from kddet.engine import Trainer

    cfg = load_config(config, opts)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    batches = torch.load(batches_file, weights_only=False)
    measure_frozen_bn_statistics(model, batches[0])  # random weights that do not diverge (the teacher's are in its file)
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
    out.put({"step_s": statistics.median(times), "peak_mb": _peak_memory_mb(device)})


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="configs/shapes/student_slim_r8.yaml")
    parser.add_argument("--recipes", nargs="+", default=["configs/shapes/fitnet.yaml"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (fp16 on cuda, bf16 on cpu)")
    parser.add_argument("--teacher-precision", choices=["bf16", "fp16", "auto"],
                        help="also run every recipe with this KD.TEACHER.PRECISION (a row each)")
    parser.add_argument("--teacher-channels-last", action="store_true",
                        help="also run every recipe with KD.TEACHER.CHANNELS_LAST True (with --teacher-precision if given)")
    parser.add_argument("--student-channels-last", action="store_true", help="also run the student alone with MODEL.CHANNELS_LAST True")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="random images of this size (after resizing) instead of the student's training loader")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", help="also write the table to this markdown file, with the command that made it")
    args = parser.parse_args()

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
            fast_fwd = in_child(measure_teacher_backbone, teacher_config, common + fast_teacher, *backbone_timing)["step_s"]
        rows = [("student alone", in_child(measure_training, args.student, common, *timing))]
        if args.student_channels_last:
            rows.append(("student alone, channels_last", in_child(measure_training, args.student, common + ["MODEL.CHANNELS_LAST", "True"], *timing)))
        for recipe in args.recipes:
            rows.append((Path(recipe).stem, in_child(measure_training, recipe, teacher_opts, *timing)))
            if fast_teacher:
                rows.append((f"{Path(recipe).stem}, fast teacher", in_child(measure_training, recipe, teacher_opts + fast_teacher, *timing)))
        image = batches[0][0]["image"]
        sizes = {"teacher": params_and_flops(load_config(teacher_config, common), image),
                 "student": params_and_flops(student_cfg, image)}

    memory = "peak GPU memory (MiB)" if args.device.startswith("cuda") else "peak RSS (MiB)"
    height, width = image.shape[-2:]
    lines = [f"device {args.device}, AMP {'on' if args.amp else 'off'}, batch {args.batch_size} of {height}x{width} images, "
             f"median of {args.repeats} steps after {args.warmup} warm-up"]
    for name, (params, gflops) in sizes.items():
        lines.append(f"{name}: {params:.2f} M parameters, {gflops:.2f} GFLOPs per image (inference)")
    lines.append(f"teacher inference forward: {1000 * teacher_fwd:.1f} ms per batch")
    lines.append(f"teacher backbone+FPN forward, fp32 contiguous: {1000 * backbone_fwd:.1f} ms per batch")
    if fast_teacher:
        lines.append(f"teacher backbone+FPN forward, {' '.join(fast_teacher)}: {1000 * fast_fwd:.1f} ms per batch "
                     f"({backbone_fwd / fast_fwd:.2f}x faster); the rows *fast teacher* run it so")
    lines += [
        "",
        f"| variant | step (ms) | time / student | added, in teacher inference forwards | added, in fp32 teacher backbone+FPN "
        f"forwards | {memory} | memory / student |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = rows[0][1]
    for name, r in rows:
        added = r["step_s"] - base["step_s"]
        lines.append(f"| {name} | {1000 * r['step_s']:.1f} | {r['step_s'] / base['step_s']:.2f} | {added / teacher_fwd:.2f} | "
                     f"{added / backbone_fwd:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f} |")
    print("\n" + "\n".join(lines))
    if args.output:
        command = " ".join(["python tools/benchmark.py", *sys.argv[1:]])
        Path(args.output).write_text(f"# tools/benchmark.py on {args.device}\n\nGenerated by\n\n```\n{command}\n```\n\n"
                                     + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
