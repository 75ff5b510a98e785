#!/usr/bin/env python
"""Train and evaluate teachers, students and distilled students (detectron2's train_net).

python tools/train_net.py --config-file configs/shapes/fitnet.yaml
python tools/train_net.py --config-file configs/shapes/fitnet.yaml --check   # dry run, no training
python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
python tools/train_net.py --config-file CONFIG --num-gpus 8 --resume
python tools/train_net.py --config-file configs/shapes/fitnet.yaml --num-cpu-processes 2   # MODEL.DEVICE cpu
"""

import sys

import kddet

kddet.setup()  # compat shims and kddet's data set, before detectron2's modules

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.modeling import build_model

from kddet.config import load_config
from kddet.dry_run import dry_run
from kddet.engine import Trainer, setup_cfg, student_only
from kddet.launch import launch_cpu_processes


def main(args):
    cfg = setup_cfg(args)
    if args.num_cpu_processes > 1 and cfg.MODEL.DEVICE != "cpu":
        raise ValueError(
            f"--num-cpu-processes trains on the CPU, but MODEL.DEVICE is '{cfg.MODEL.DEVICE}': set MODEL.DEVICE cpu, "
            "or use --num-gpus for GPUs."
        )
    if args.eval_only:
        # The student alone, without the distillation checks: they are about training.
        model = build_model(student_only(cfg))
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check(args) -> int:
    """Build the model, check the distillation settings, print the summary; 1 if anything stops training."""
    report, num_errors = dry_run(load_config(args.config_file, args.opts))
    print(report)
    return 1 if num_errors else 0


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument(
        "--check", action="store_true",
        help="dry run: build the model, check the distillation settings, print their summary and exit without training",
    )  # fmt: skip
    parser.add_argument(
        "--num-cpu-processes", type=int, default=1, metavar="N",
        help="train in N processes on this machine's CPU (gloo), the batch split among them; --num-gpus for GPUs",
    )  # fmt: skip
    args = parser.parse_args()
    if args.num_cpu_processes < 1:
        parser.error(f"--num-cpu-processes must be 1 or more, not {args.num_cpu_processes}")
    if args.num_cpu_processes > 1 and (args.num_gpus > 1 or args.num_machines > 1):
        parser.error("--num-cpu-processes runs processes on this machine's CPU: drop --num-gpus and --num-machines")
    if args.check:
        sys.exit(check(args))
    print("Command Line Args:", args)
    if args.num_cpu_processes > 1:
        launch_cpu_processes(main, args.num_cpu_processes, args=(args,))
    else:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
