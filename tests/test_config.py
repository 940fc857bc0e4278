import glob
import os

import pytest
from detectron2.config import get_cfg

from plrc_d2.config import add_plrc_config, validate_plrc_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plrc_cfg():
    cfg = get_cfg()
    add_plrc_config(cfg)
    return cfg


def all_yaml_files():
    files = glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
    files += glob.glob(os.path.join(REPO_ROOT, "projects", "**", "*.yaml"), recursive=True)
    return sorted(files)


def test_yaml_files_found():
    names = [os.path.relpath(f, REPO_ROOT) for f in all_yaml_files()]
    assert "configs/plrc_pretrain.yaml" in names
    assert "configs/Base-PLRC.yaml" in names
    assert "configs/pretrain/plrc_R_50_100ep_in1k.yaml" in names


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_yaml_merges(path):
    cfg = plrc_cfg()
    cfg.merge_from_file(path)  # unknown keys raise KeyError
    if cfg.MODEL.META_ARCHITECTURE == "PLRC":
        validate_plrc_config(cfg)


def test_reference_defaults():
    cfg = plrc_cfg()
    m, i = cfg.MODEL.PLRC, cfg.INPUT.PLRC
    assert (m.EMBED_DIM, m.QUEUE_SIZE, m.IMAGE_TEMPERATURE, m.MOMENTUM) == (128, 65536, 0.2, 0.999)
    assert (m.POINT_TEMPERATURE, m.POINT_BASE_TEMPERATURE) == (0.2, 0.07)
    assert (m.STUDENT_TEMPERATURE, m.TEACHER_TEMPERATURE_START, m.TEACHER_TEMPERATURE) == (0.1, 0.04, 0.07)
    assert (m.TEACHER_TEMPERATURE_WARMUP, m.CENTER_MOMENTUM, m.MAP_SIZE) == (0.3, 0.9, 56)
    assert (m.DISTILL_DIM, m.DISTILL_NUM_LOGITS) == (256, 4096)
    assert (m.IMAGE_LOSS_WEIGHT, m.POINT_LOSS_WEIGHT, m.DISTILL_LOSS_WEIGHT) == (0.7, 0.3, 0.3)
    assert tuple(i.GRID_SIZE) == (4, 4) and i.CROP_SIZE == 224
    assert (i.NUM_SHARED_REGIONS, i.POINTS_PER_REGION, i.DISTILL_MIN_OVERLAP) == (1, 16, 0.5)


def test_reference_recipe_arithmetic():
    cfg = plrc_cfg()
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/pretrain/plrc_R_50_100ep_in1k.yaml"))
    assert cfg.SOLVER.MAX_ITER == -(-1281167 * 100 // 256)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.03 * cfg.SOLVER.IMS_PER_BATCH / 256)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"


def test_add_plrc_config_idempotent():
    cfg = plrc_cfg()
    cfg.MODEL.PLRC.QUEUE_SIZE = 32
    add_plrc_config(cfg)
    assert cfg.MODEL.PLRC.QUEUE_SIZE == 32 and cfg.INPUT.PLRC.GRID_SIZE == (4, 4)
    assert cfg.dump() == add_plrc_config(cfg).dump()


@pytest.mark.parametrize(
    "opts, message",
    [
        (["INPUT.PLRC.GRID_SIZE", (1, 1)], "GRID_SIZE"),
        (["INPUT.PLRC.POINTS_PER_REGION", 0], "POINTS_PER_REGION"),
        (["MODEL.PLRC.QUEUE_SIZE", 1000, "SOLVER.IMS_PER_BATCH", 256], "multiple of the global batch"),
        (["MODEL.PLRC.IMAGE_TEMPERATURE", 0.0], "IMAGE_TEMPERATURE"),
        (["MODEL.PLRC.STUDENT_TEMPERATURE", -0.1], "STUDENT_TEMPERATURE"),
        (["MODEL.PLRC.MOMENTUM", 1.5], "MOMENTUM"),
        (["MODEL.PLRC.MOMENTUM_SCHEDULE", "linear"], "MOMENTUM_SCHEDULE"),
        (["INPUT.PLRC.REGION_SOURCE", "slic"], "REGION_SOURCE"),
        (["INPUT.PLRC.CROP_SCALE", (0.5, 0.2)], "CROP_SCALE"),
        (["INPUT.PLRC.FLIP_PROB", 2.0], "FLIP_PROB"),
        (["INPUT.PLRC.DISTILL_MIN_OVERLAP", 0.0], "DISTILL_MIN_OVERLAP"),
        (["INPUT.PLRC.NUM_SHARED_REGIONS", 0], "NUM_SHARED_REGIONS"),
        (["MODEL.PLRC.IMAGE_LOSS_WEIGHT", 0.0, "MODEL.PLRC.POINT_LOSS_WEIGHT", 0.0,
          "MODEL.PLRC.DISTILL_LOSS_WEIGHT", 0.0], "not all 0"),
        (["INPUT.PLRC.CROP_SIZE", 16], "CROP_SIZE"),
        (["MODEL.PLRC.DISTILL_CPU_KERNEL", "fast"], "DISTILL_CPU_KERNEL"),
    ],
)
def test_validation_rejects_nonsense(opts, message):
    cfg = plrc_cfg()
    cfg.merge_from_list([str(o) for o in opts])  # values go through literal_eval, as on the command line
    with pytest.raises(ValueError, match=message):
        validate_plrc_config(cfg)


def test_validation_checks_world_size():
    cfg = plrc_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 6
    cfg.MODEL.PLRC.QUEUE_SIZE = 60
    validate_plrc_config(cfg, world_size=2)
    with pytest.raises(ValueError, match="divisible by the 4 processes"):
        validate_plrc_config(cfg, world_size=4)


def test_defaults_validate():
    validate_plrc_config(plrc_cfg())
