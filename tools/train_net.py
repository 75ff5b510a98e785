#!/usr/bin/env python
"""Train and evaluate teachers, students and distilled students (detectron2's train_net).

    python tools/train_net.py --config-file configs/shapes/fitnet.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CONFIG --num-gpus 8 --resume
"""
import kddet  # noqa: F401  (compat shims and registrations come before detectron2's modules)

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

from kddet.engine import Trainer, setup_cfg, student_only


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(student_only(cfg))
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
