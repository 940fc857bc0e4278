#!/usr/bin/env python
"""PLRC pre-training and detectron2 fine-tuning.

Pre-train:  python tools/train_net.py --config-file configs/plrc_pretrain.yaml
Fine-tune:  python tools/train_net.py --config-file projects/Demo/configs/mask_rcnn_R_18_FPN_demo_plrc.yaml \
                MODEL.WEIGHTS plrc.pkl
Add --num-gpus / --num-machines / --machine-rank / --dist-url to scale out, --resume to continue a run.
"""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import plrc_d2  # noqa: F401  (registers the PLRC meta-architecture, heads and datasets)
from plrc_d2.config import add_plrc_config, validate_plrc_config
from plrc_d2.engine.trainer import Trainer, is_pretraining

logger = logging.getLogger("plrc_d2")


def setup(args):
    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print(f"No CUDA device available: running on the CPU instead of MODEL.DEVICE={cfg.MODEL.DEVICE!r}")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise SystemExit("SOLVER.AMP.ENABLED needs a CUDA device (detectron2's AMPTrainer); set it to False on the CPU")
    if is_pretraining(cfg):
        validate_plrc_config(cfg, world_size=args.num_gpus * args.num_machines)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="plrc_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if is_pretraining(cfg):
            raise SystemExit("--eval-only evaluates detection models; a PLRC pre-training run has no evaluator")
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, res)
        return res
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
