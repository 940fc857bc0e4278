"""tools/demo.py: resumable stages, the results table, and a tiny fine-tune of the demo Mask R-CNN from
converted weights on a COCO-format dataset written here (2 iterations, 64 px)."""
import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FT = os.path.join(REPO, "projects", "Demo", "configs", "mask_rcnn_R_18_FPN_demo_plrc.yaml")


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("plrc_demo_tool", os.path.join(REPO, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stages_skip_done_and_fail_loudly(demo, tmp_path, capsys):
    stages = demo.Stages(str(tmp_path))
    target = tmp_path / "made.txt"
    make = [sys.executable, "-c", f"open({str(target)!r}, 'w').write('x')"]
    stages.run("make", target.exists, make)
    assert target.exists() and json.load(open(tmp_path / "stages.json"))["make"]["wall_s"] >= 0
    target.write_text("kept")
    demo.Stages(str(tmp_path)).run("make", target.exists, make)  # a new invocation skips the finished stage
    assert target.read_text() == "kept" and "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exit 3"):
        stages.run("broken", lambda: False, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(SystemExit, match="output is missing"):
        stages.run("silent", lambda: False, [sys.executable, "-c", "pass"])


def test_final_metrics_and_table(demo, tmp_path):
    out = tmp_path / "ft"
    out.mkdir()
    assert demo.final_metrics(str(out)) == {}
    with open(out / "metrics.json", "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 2.0}) + "\n")
        f.write(json.dumps({"iteration": 99, "bbox/AP": 12.345, "bbox/AP50": 30.0, "bbox/AP75": 9.0}) + "\n")
    assert demo.final_metrics(str(out)) == {}  # no mask AP yet: not finished
    with open(out / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 99, "segm/AP": 10.0}) + "\n")
    assert demo.final_metrics(str(out))["segm/AP"] == 10.0
    stages = demo.Stages(str(tmp_path))
    stages.record["ft"] = {"wall_s": 120.0, "skipped": False}
    text = demo.table(stages, [("PLRC pre-trained", "ft", str(out))])
    assert "| PLRC pre-trained | 12.3 | 30.0 | 9.0 | 10.0 | 2.0 min |" in text


def write_tiny_coco(root, n=4, size=64):
    """n images with one filled square each (category 1 + i % 2), polygon masks."""
    os.makedirs(root / "img", exist_ok=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x0, y0, s = int(rng.integers(4, 24)), int(rng.integers(4, 24)), int(rng.integers(16, 32))
        img[y0:y0 + s, x0:x0 + s] = (200, 40 + 100 * (i % 2), 40)
        cv2.imwrite(str(root / "img" / f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        poly = [x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [x0, y0, s, s],
                     "area": s * s, "iscrowd": 0, "segmentation": [[float(v) for v in poly]]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with open(root / "ann.json", "w") as f:
        json.dump(coco, f)


def test_tiny_finetune_from_converted_weights(demo, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances

    import plrc_d2  # noqa: F401
    from plrc_d2.checkpoint.cli import main as convert
    from plrc_d2.config import add_plrc_config
    from plrc_d2.engine.trainer import Trainer

    write_tiny_coco(tmp_path)
    register_coco_instances("xfer_tiny_coco", {}, str(tmp_path / "ann.json"), str(tmp_path / "img"))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    weights = str(tmp_path / "r18.pkl")
    assert convert([str(tmp_path / "r18.pth"), weights, "--config-file", DEMO_FT]) == 0
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "DATASETS.TRAIN", "('xfer_tiny_coco',)",
            "DATASETS.TEST", "('xfer_tiny_coco',)", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "TEST.PRECISE_BN.NUM_ITER", "1",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0"]
    demo.check_weights(DEMO_FT, weights, "cpu", opts)  # every ResNet tensor is initialised
    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(DEMO_FT)
    cfg.merge_from_list(opts + ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "ft")])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    stem = trainer.model.backbone.bottom_up.stem.conv1.weight.detach().clone()
    source = torch.load(tmp_path / "r18.pth")["conv1.weight"]
    assert torch.equal(stem, source)  # loaded, before any update
    trainer.train()
    metrics = demo.final_metrics(str(tmp_path / "ft"))
    assert set(metrics) == {"bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP"}
    assert all(np.isfinite(v) for v in metrics.values())
