"""Converter: exact renames, values preserved, loads into stock detectron2 / torchvision models."""
import os
import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone

import plrc_d2  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from plrc_d2.checkpoint import (
    ConversionError, ResNetKey, arch_for_depth, assert_backbone_loaded, backbone_load_report, check_target,
    extract_backbone, format_key, parse_key, to_d2_checkpoint, to_torchvision_state_dict,
)
from plrc_d2.checkpoint.cli import main as cli_main
from plrc_d2.config import add_plrc_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPN_CFG = os.path.join(REPO, "projects/MaskRCNN-COCO/configs/mask_rcnn_R_50_FPN_1x_plrc.yaml")
C4_CFG = os.path.join(REPO, "projects/MaskRCNN-COCO/configs/mask_rcnn_R_50_C4_1x_plrc.yaml")


def seeded(sd, seed=0):
    """Distinct random values in every tensor (incl. BN statistics), so a mix-up cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone()) for k, v in sd.items()}


@pytest.fixture(scope="module")
def tv18():
    return seeded(torchvision.models.resnet18(weights=None).state_dict(), 1)


@pytest.fixture(scope="module")
def tv50():
    return seeded(torchvision.models.resnet50(weights=None).state_dict(), 2)


def d2_resnet_state(depth):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM, cfg.MODEL.RESNETS.STRIDE_IN_1X1 = depth, "BN", False
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    return seeded(build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict(), depth)


def reference_layout(tv):
    sd = {f"module.encoder_q.enc.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    sd.update({f"module.encoder_k.enc.{k}": v * 2 for k, v in tv.items() if not k.startswith("fc.")})
    sd.update({"module.encoder_q.fcs.0.weight": torch.ones(8, 4), "module.encoder_q.fcs_2.3.weight_g": torch.ones(4),
               "module.encoder_k.fcs.0.weight": torch.ones(8, 4), "module.queue": torch.ones(128, 16),
               "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"state_dict": sd, "epoch": 100, "arch": "resnet50"}


def moco_layout(tv):
    sd = {f"module.encoder_q.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    sd.update({"module.encoder_q.fc.0.weight": torch.ones(8, 4), "module.encoder_q.fc.2.bias": torch.ones(4)})
    sd.update({f"module.encoder_k.{k}": v * 3 for k, v in tv.items()})
    sd["module.queue"] = torch.ones(128, 16)
    return {"state_dict": sd, "epoch": 200}


def detection_cfg(path, depth):
    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "BN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_and_compare(cfg, pkl, source_by_d2_name):
    """Loads `pkl` like MODEL.WEIGHTS and checks every ResNet tensor equals its source tensor."""
    model = build_model(cfg)
    loaded = assert_backbone_loaded(model, pkl)
    DetectionCheckpointer(model).load(pkl)
    state = model.state_dict()
    assert len(loaded) == len([k for k in source_by_d2_name if not k.endswith("num_batches_tracked")])
    for name in loaded:
        d2_name = name.split("bottom_up.")[-1].replace("roi_heads.", "").replace("backbone.", "")
        assert torch.equal(state[name], source_by_d2_name[d2_name]), name
    return model


def tv_to_d2_names(tv):
    return {format_key(parse_key(k, "torchvision"), "d2"): v for k, v in tv.items() if not k.startswith("fc.")}


def test_key_round_trip(tv50, tv18):
    for sd in (tv50, tv18):
        for k in sd:
            key = parse_key(k, "torchvision")
            if k.startswith("fc."):
                assert key is None
                continue
            assert format_key(key, "torchvision") == k
            assert parse_key(format_key(key, "d2"), "d2") == key
    assert format_key(parse_key("layer1.0.downsample.1.running_var", "torchvision"), "d2") == \
        "res2.0.shortcut.norm.running_var"
    assert format_key(ResNetKey(1, -1, "conv1", True, "bias"), "d2") == "stem.conv1.norm.bias"
    assert parse_key("layer1.0.conv1.weight_extra", "torchvision") is None


def test_d2_names_match_detectron2_resnet():
    sd = d2_resnet_state(50)
    assert all(parse_key(k, "d2") is not None for k in sd)


def test_reference_layout_to_c4(tmp_path, tv50):
    conv = extract_backbone(reference_layout(tv50)["state_dict"])
    assert conv.layout.name == "plrc_reference" and conv.arch == arch_for_depth(50)
    assert conv.dropped["module.encoder_k.enc.* (momentum encoder backbone)"] == len(tv50) - 2
    pkl = tmp_path / "ref.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(to_d2_checkpoint(conv), f)
    model = load_and_compare(detection_cfg(C4_CFG, 50), str(pkl), tv_to_d2_names(tv50))
    assert "roi_heads.res5.norm.weight" in model.state_dict()  # the extra norm exists and is new
    assert "roi_heads.res5.norm.weight" not in backbone_load_report(model, str(pkl))["missing"]


def test_momentum_encoder(tv50):
    conv = extract_backbone(reference_layout(tv50)["state_dict"], encoder="momentum")
    key = parse_key("layer2.1.conv2.weight", "torchvision")
    assert torch.equal(conv.tensors[key], tv50["layer2.1.conv2.weight"] * 2)
    with pytest.raises(ConversionError, match="momentum"):
        extract_backbone(tv50, encoder="momentum")


def test_moco_layout_to_fpn_via_cli(tmp_path, tv18, capsys):
    src = tmp_path / "moco.pth.tar"
    torch.save(moco_layout(tv18), src)
    out = tmp_path / "moco.pkl"
    assert cli_main([str(src), str(out), "--depth", "18"]) == 0
    report = capsys.readouterr().out
    assert "layout: moco" in report and "STRIDE_IN_1X1 False" in report and "INPUT.FORMAT RGB" in report
    assert "module.encoder_q.fc.* (classifier / projection head): 2" in report
    with open(out, "rb") as f:
        ckpt = pickle.load(f)
    assert ckpt["__author__"] == "plrc_d2" and ckpt["matching_heuristics"] is True
    assert "stem.conv1.weight" in ckpt["model"] and "res2.0.conv1.norm.running_mean" in ckpt["model"]
    assert all(parse_key(k, "d2") is not None for k in ckpt["model"])
    load_and_compare(detection_cfg(FPN_CFG, 18), str(out), tv_to_d2_names(tv18))


def test_plrc_d2_layout_to_fpn(tmp_path):
    online = d2_resnet_state(18)
    sd = {f"encoder.backbone.{k}": v for k, v in online.items()}
    sd.update({f"momentum_encoder.backbone.{k}": v * 2 for k, v in online.items()})
    sd.update({"encoder.dense_head.fc1.weight": torch.ones(4, 4), "queue": torch.ones(16, 8)})
    conv = extract_backbone(sd)
    assert conv.layout.name == "plrc_d2" and conv.arch.depth == 18
    pkl = tmp_path / "ours.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(to_d2_checkpoint(conv), f)
    load_and_compare(detection_cfg(FPN_CFG, 18), str(pkl), online)


def test_torchvision_output_loads_into_resnet50(tmp_path, tv50):
    conv = extract_backbone(reference_layout(tv50)["state_dict"])
    model = torchvision.models.resnet50(weights=None)
    result = model.load_state_dict(to_torchvision_state_dict(conv), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    for k, v in model.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, tv50[k]), k


def test_naive_prefix_strip_is_caught(tmp_path, tv18):
    """MoCo's converter on the reference layout strips only module.encoder_q.: nothing would match."""
    naive = {"model": {k.replace("module.encoder_q.", ""): v.numpy() for k, v in
                       reference_layout(tv18)["state_dict"].items() if k.startswith("module.encoder_q.")},
             "__author__": "naive", "matching_heuristics": True}
    pkl = tmp_path / "naive.pkl"
    with open(pkl, "wb") as f:
        pickle.dump(naive, f)
    model = build_model(detection_cfg(FPN_CFG, 18))
    with pytest.raises(RuntimeError, match="random init"):
        assert_backbone_loaded(model, str(pkl))


def test_target_check(tv18):
    conv = extract_backbone(tv18)
    check_target(conv, arch_for_depth(18))
    with pytest.raises(ConversionError, match="ResNet-18.*target is ResNet-50"):
        check_target(conv, arch_for_depth(50))


def test_real_plrc_checkpoint_round_trip(tmp_path):
    """A DetectionCheckpointer checkpoint of the tiny PLRC model: both encoders convert exactly."""
    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs/quick_schedules/plrc_R_18_quick.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # make the two encoders differ, as after training
        for p in model.momentum_encoder.parameters():
            p.add_(1.0)
    DetectionCheckpointer(model, str(tmp_path)).save("model_final")
    src, out = tmp_path / "model_final.pth", tmp_path / "plrc.pkl"
    for encoder, module in (("momentum", model.momentum_encoder), ("online", model.encoder)):
        assert cli_main([str(src), str(out), "--encoder", encoder, "--depth", "18"]) == 0
        with open(out, "rb") as f:
            converted = pickle.load(f)["model"]
        expected = {k: v for k, v in module.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert converted.keys() == expected.keys()
        for k, v in expected.items():
            assert torch.equal(torch.as_tensor(converted[k]), v), (encoder, k)
    load_and_compare(detection_cfg(FPN_CFG, 18), str(out), model.encoder.backbone.state_dict())
