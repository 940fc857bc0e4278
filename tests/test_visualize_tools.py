"""tools/visualize_points.py and PointPanelHook on the tiny quick config, a generated image and a
randomly initialised (or freshly saved) PLRC model, on the CPU."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

import plrc_d2  # noqa: F401
from plrc_d2.config import add_plrc_config
from plrc_d2.data.mapper import PLRCDatasetMapper
from plrc_d2.engine.vis_hook import PanelOptions, PointPanelHook, compute_panel_data, map_sample
from plrc_d2.visualization import panel_size

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO_ROOT, "configs", "quick_schedules", "plrc_R_18_quick.yaml")
TILE = 64


def _tool():
    spec = importlib.util.spec_from_file_location("visualize_points",
                                                  os.path.join(REPO_ROOT, "tools", "visualize_points.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quick_cfg(output_dir=""):
    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file(QUICK)
    cfg.MODEL.DEVICE = "cpu"
    if output_dir:
        cfg.OUTPUT_DIR = str(output_dir)
    return cfg


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A 90 x 120 scene: textured background, a red and a blue block (asymmetric)."""
    rng = np.random.default_rng(0)
    image = np.full((90, 120, 3), (60, 110, 60), np.uint8)
    image[10:50, 15:60] = (210, 40, 40)
    image[50:85, 70:115] = (40, 40, 220)
    image = np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(image).save(path)
    return str(path)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_quick_cfg()).eval()


def test_self_affinity_argmax_on_a_real_model(model, image_path):
    cfg = _quick_cfg()
    mapped = map_sample(PLRCDatasetMapper(cfg), {"file_name": image_path, "image_id": 0}, seed=3)
    options = PanelOptions(num_query_points=3, map_size=cfg.MODEL.PLRC.MAP_SIZE)
    data = compute_panel_data(model, mapped["sample"], mapped["image"], mapped["region_map"],
                              input_format=cfg.INPUT.FORMAT, options=options)
    size = cfg.INPUT.PLRC.CROP_SIZE
    maps = data.affinity.maps
    assert maps["V_q"].shape == maps["V_k"].shape == (3, size, size)
    assert maps["image"].shape == (3, 90, 120)  # the whole image, at its display size
    for q, (x, y) in enumerate(data.affinity.query_points_wrt_view):
        own = maps["V_q"][q, int(y * size), int(x * size)]
        assert own == pytest.approx(1.0, abs=1e-9)  # the query against its own embedding
        assert own >= maps["V_q"][q].max() - 1e-12  # ... is the maximum of its self-affinity map
        assert np.abs(maps["V_k"][q]).max() <= 1 + 1e-9


def test_visualize_points_tool(tmp_path, image_path, model):
    tool = _tool()
    out = tmp_path / "viz"
    args = ["--config-file", QUICK, "--input", image_path, "--output", str(out), "--tile", str(TILE),
            "--num-query-points", "2"]
    assert tool.main(args) == 0
    panel = Image.open(out / "scene_points.png")
    assert panel.size == panel_size(2, TILE)[::-1]

    weights = tmp_path / "ckpt"
    weights.mkdir()
    DetectionCheckpointer(model, save_dir=str(weights)).save("model_final")
    single = tmp_path / "single" / "panel.png"  # a .png --output names the file itself
    args[args.index(str(out))] = str(single)
    assert tool.main(args + ["--weights", str(weights / "model_final.pth"), "--embedding", "distill"]) == 0
    assert Image.open(single).size == panel_size(2, TILE)[::-1]
    with pytest.raises(SystemExit, match="of the wrong shape"):  # a checkpoint of another head size
        tool.main(args + ["--weights", str(weights / "model_final.pth"), "MODEL.PLRC.EMBED_DIM", "16"])


def test_visualize_points_rejects_wrong_checkpoints(tmp_path, image_path):
    tool = _tool()
    args = ["--config-file", QUICK, "--input", image_path, "--output", str(tmp_path)]
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        tool.main(args + ["--weights", str(text)])
    other = tmp_path / "other.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(SystemExit, match="does not fit this PLRC model"):
        tool.main(args + ["--weights", str(other)])
    with pytest.raises(SystemExit, match="does not exist"):
        tool.main(["--config-file", QUICK, "--input", str(tmp_path / "missing.jpg"), "--output", str(tmp_path)])


class _Trainer:
    """The attributes PointPanelHook reads from a detectron2 trainer."""

    def __init__(self, model, iteration, max_iter):
        self.model, self.iter, self.max_iter = model, iteration, max_iter


def test_point_panel_hook_writes_png_and_tensorboard_image(tmp_path, image_path, model):
    DatasetCatalog.register("plrc_vis_hook_test", lambda: [{"file_name": image_path, "image_id": 0}])
    try:
        cfg = _quick_cfg(tmp_path)
        cfg.DATASETS.TRAIN = ("plrc_vis_hook_test",)
        cfg.PLRC_VIS.PERIOD = 2
        cfg.PLRC_VIS.NUM_QUERY_POINTS = 1
        hook = PointPanelHook.from_config(cfg, None)
        model.train()
        with EventStorage(0) as storage:
            for iteration in range(3):
                hook.trainer = _Trainer(model, iteration, max_iter=4)
                storage.iter = iteration
                hook.after_step()
        assert model.training  # restored after the panel's eval-mode forward
        assert sorted(os.listdir(tmp_path)) == ["point_panel_0000001.png"]  # (1 + 1) % 2 == 0
        names = [name for name, _, _ in storage._vis_data]
        assert names == ["plrc/point_panel"]
        image = storage._vis_data[0][1]
        height, width = panel_size(1, 192)
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    finally:
        DatasetCatalog.remove("plrc_vis_hook_test")


def test_point_panel_hook_turns_off_when_no_sample_is_readable(tmp_path, model):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    DatasetCatalog.register("plrc_vis_hook_broken", lambda: [{"file_name": str(broken), "image_id": 0}])
    try:
        cfg = _quick_cfg(tmp_path / "out")
        cfg.DATASETS.TRAIN = ("plrc_vis_hook_broken",)
        cfg.PLRC_VIS.PERIOD = 1
        hook = PointPanelHook.from_config(cfg, None)
        with EventStorage(0) as storage:
            hook.trainer = _Trainer(model, 0, max_iter=4)
            hook.after_step()
        assert hook.period == 0 and storage._vis_data == [] and not (tmp_path / "out").exists()
    finally:
        DatasetCatalog.remove("plrc_vis_hook_broken")
