"""Helpers shared by the PLRC model tests: a tiny CPU config and contract-following synthetic inputs."""
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import plrc_d2  # noqa: F401  (registers PLRC)
from plrc_d2.benchmark.train import synthetic_inputs
from plrc_d2.config import add_plrc_config


def tiny_cfg(*opts):
    """The quick-schedule config (ResNet-18, queue 16) at 32 px, M = 6, on CPU (run from the repo root)."""
    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file("configs/quick_schedules/plrc_R_18_quick.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.PLRC.MAP_SIZE", 6, "INPUT.PLRC.CROP_SIZE", 32, *opts])
    return cfg


def tiny_model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*opts)).train()


def inputs(n=4, seed=1, size=32):
    """n dataset dicts, 2 region rows of 3 points per view."""
    return synthetic_inputs(n, size, 2, 3, seed=seed)
