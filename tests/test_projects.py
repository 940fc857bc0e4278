"""Transfer recipes under projects/: the protocol settings the converted weights need, the schedules of
each recipe, the detectron2 base mirrors, the extra-norm C4 head, and the VOC seeds script."""
import glob
import os

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import plrc_d2  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from plrc_d2.checkpoint.architecture import config_problems
from plrc_d2.config import add_plrc_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECTS = os.path.join(REPO, "projects")
RECIPES = sorted(p for p in glob.glob(os.path.join(PROJECTS, "*", "configs", "*.yaml"))
                 if "/TransferStudy/" not in p and not os.path.basename(p).startswith("Base-"))


def load(path, opts=()):
    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def rel(path):
    return os.path.relpath(path, PROJECTS)


@pytest.mark.parametrize("name", ["Base-RCNN-FPN.yaml", "Base-RCNN-C4.yaml"])
def test_base_mirrors_equal_detectron2(name):
    ours = load(os.path.join(PROJECTS, "detectron2_base", name))
    stock = load(model_zoo.get_config_file(name))
    assert ours.dump() == stock.dump()


def test_every_project_has_readme_and_recipes():
    for project in ("MaskRCNN-COCO", "FasterRCNN-VOC", "Demo"):
        assert os.path.exists(os.path.join(PROJECTS, project, "README.md")), project
    names = {os.path.basename(p) for p in RECIPES}
    for n in ("mask_rcnn_R_50_FPN_1x_plrc.yaml", "mask_rcnn_R_50_FPN_2x_plrc.yaml",
              "mask_rcnn_R_50_FPN_1x_plrc_pycontrast.yaml", "mask_rcnn_R_50_FPN_2x_plrc_pycontrast.yaml",
              "mask_rcnn_R_50_C4_1x_plrc.yaml", "mask_rcnn_R_50_C4_2x_plrc.yaml",
              "faster_rcnn_R_50_C4_voc_plrc.yaml", "mask_rcnn_R_18_FPN_demo_plrc.yaml",
              "mask_rcnn_R_18_FPN_demo_random_init.yaml"):
        assert n in names, n


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_moco_protocol(path):
    cfg = load(path)
    assert config_problems(cfg) == []  # RGB, torchvision mean/std, STRIDE_IN_1X1 False
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.TEST.PRECISE_BN.ENABLED
    assert cfg.MODEL.RESNETS.NORM in ("SyncBN", "naiveSyncBN")
    if "FPN" in cfg.MODEL.BACKBONE.NAME.upper():
        assert cfg.MODEL.FPN.NORM == cfg.MODEL.RESNETS.NORM
    else:
        assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"


@pytest.mark.parametrize("name, max_iter, steps", [
    ("mask_rcnn_R_50_FPN_1x_plrc.yaml", 90000, (60000, 80000)),
    ("mask_rcnn_R_50_FPN_2x_plrc.yaml", 180000, (120000, 160000)),
    ("mask_rcnn_R_50_FPN_1x_plrc_pycontrast.yaml", 90000, (60000, 80000)),
    ("mask_rcnn_R_50_FPN_2x_plrc_pycontrast.yaml", 180000, (120000, 160000)),
    ("mask_rcnn_R_50_C4_1x_plrc.yaml", 90000, (60000, 80000)),
    ("mask_rcnn_R_50_C4_2x_plrc.yaml", 180000, (120000, 160000)),
])
def test_coco_schedules(name, max_iter, steps):
    cfg = load(os.path.join(PROJECTS, "MaskRCNN-COCO", "configs", name))
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (max_iter, steps)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.MODEL.MASK_ON) == (16, 0.02, True)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.MODEL.RESNETS.DEPTH == 50
    pycontrast = "pycontrast" in name
    box = cfg.MODEL.ROI_BOX_HEAD
    assert ((box.NUM_CONV, box.NUM_FC, box.NORM) == (4, 1, "SyncBN")) == pycontrast
    assert (cfg.MODEL.ROI_MASK_HEAD.NORM == "SyncBN") == pycontrast


def test_voc_recipe():
    cfg = load(os.path.join(PROJECTS, "FasterRCNN-VOC", "configs", "faster_rcnn_R_50_C4_voc_plrc.yaml"))
    s = cfg.SOLVER
    assert (s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS, s.IMS_PER_BATCH, s.BASE_LR) == (24000, (18000, 22000), 100, 16, 0.02)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20 and not cfg.MODEL.MASK_ON
    assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval") and cfg.DATASETS.TEST == ("voc_2007_test",)


def test_extra_norm_c4_head_builds_and_runs():
    cfg = load(os.path.join(PROJECTS, "FasterRCNN-VOC", "configs", "faster_rcnn_R_50_C4_voc_plrc.yaml"),
               ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    res5 = model.roi_heads.res5
    assert [name for name, _ in res5.named_children()] == ["0", "1", "2", "norm"]
    assert res5.norm.num_features == 2048
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "height": 64, "width": 80}])
    assert out[0]["instances"].image_size == (64, 80)


def test_demo_baseline_differs_only_in_init():
    d = os.path.join(PROJECTS, "Demo", "configs")
    plrc, rand = load(os.path.join(d, "mask_rcnn_R_18_FPN_demo_plrc.yaml")), load(os.path.join(d, "mask_rcnn_R_18_FPN_demo_random_init.yaml"))
    plrc.MODEL.WEIGHTS = rand.MODEL.WEIGHTS = plrc.OUTPUT_DIR = rand.OUTPUT_DIR = ""
    assert plrc.dump() == rand.dump()
    pre = load(os.path.join(REPO, "configs", "plrc_pretrain.yaml"))
    for key in ("DEPTH", "RES2_OUT_CHANNELS", "STRIDE_IN_1X1"):
        assert plrc.MODEL.RESNETS[key] == pre.MODEL.RESNETS[key], key
    assert plrc.DATASETS.TRAIN == ("plrc_demo_train",) and plrc.DATASETS.TEST == ("plrc_demo_val",)


def test_voc_seeds_summary(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("run_seeds", os.path.join(PROJECTS, "FasterRCNN-VOC", "run_seeds.py"))
    run_seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_seeds)
    for seed, ap in ((0, 57.0), (1, 59.0)):
        os.makedirs(tmp_path / f"seed{seed}")
        with open(tmp_path / f"seed{seed}" / "metrics.json", "w") as f:
            f.write(json.dumps({"iteration": 10, "total_loss": 1.0}) + "\n")
            f.write(json.dumps({"iteration": 23999, "bbox/AP": ap, "bbox/AP50": 80.0, "bbox/AP75": ap + 5}) + "\n")
    per_seed = {s: run_seeds.final_metrics(str(tmp_path / f"seed{s}")) for s in (0, 1)}
    summary = run_seeds.summarize(per_seed)
    assert summary["bbox/AP"] == pytest.approx((58.0, 2 ** 0.5)) and summary["bbox/AP50"] == (80.0, 0.0)
    assert "58.00 ± 1.41" in run_seeds.format_summary(per_seed, summary)
    assert run_seeds.final_metrics(str(tmp_path / "missing")) == {}
    args = run_seeds.parse_args(["--weights", "w.pkl", "--seeds", "3", "--output", str(tmp_path), "--num-gpus", "2"])
    cmd = run_seeds.seed_command(args, 3)
    assert cmd[cmd.index("SEED") + 1] == "3" and cmd[cmd.index("MODEL.WEIGHTS") + 1] == "w.pkl" and "--resume" in cmd
