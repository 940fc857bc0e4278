"""Converter command line on bad input: non-zero exit, a message naming the problem, no traceback,
nothing written. Exit codes are checked through a real subprocess."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision

from plrc_d2.checkpoint.cli import main as cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "convert_plrc_to_d2.py")
R50_FPN = os.path.join(REPO, "projects/MaskRCNN-COCO/configs/mask_rcnn_R_50_FPN_1x_plrc.yaml")


def run_tool(*args):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def r18():
    return torchvision.models.resnet18(weights=None).state_dict()


def plrc_r18_checkpoint(r18, path):
    """A plrc_d2-layout checkpoint of a ResNet-18 (d2 names under encoder.backbone.)."""
    from plrc_d2.checkpoint import extract_backbone, format_key

    conv = extract_backbone(r18)
    model = {f"encoder.backbone.{format_key(k, 'd2')}": v for k, v in conv.tensors.items()}
    model["queue"] = torch.zeros(16, 8)
    torch.save({"model": model, "iteration": 10}, path)


def test_cli_converts_and_checks_config(tmp_path, r18):
    src, out = tmp_path / "plrc18.pth", tmp_path / "out.pkl"
    plrc_r18_checkpoint(r18, src)
    ok = run_tool(src, out, "--depth", "18")
    assert ok.returncode == 0, ok.stderr
    assert "layout: plrc_d2" in ok.stdout and "MODEL.RESNETS.DEPTH 18" in ok.stdout and out.exists()
    # The same ResNet-18 checkpoint for a ResNet-50 config must fail, naming both architectures.
    out50 = tmp_path / "out50.pkl"
    bad = run_tool(src, out50, "--config-file", R50_FPN)
    assert bad.returncode == 1
    assert "ResNet-18" in bad.stderr and "ResNet-50" in bad.stderr and not out50.exists()


def test_cli_wrong_file_type(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    proc = run_tool(text, tmp_path / "o.pkl")
    assert proc.returncode == 1 and "not a readable checkpoint" in proc.stderr
    assert not (tmp_path / "o.pkl").exists()


def test_missing_file_and_usage(tmp_path, capsys):
    assert cli_main([str(tmp_path / "nope.pth"), str(tmp_path / "o.pkl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli_main([])
    assert usage.value.code == 2


def test_truncated_file(tmp_path, r18, capsys):
    full, cut = tmp_path / "full.pth", tmp_path / "cut.pth"
    torch.save(r18, full)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert cli_main([str(cut), str(tmp_path / "o.pkl")]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_other_architecture(tmp_path, capsys):
    src = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), src)
    assert cli_main([str(src), str(tmp_path / "o.pkl")]) == 1
    err = capsys.readouterr().err
    assert "no known checkpoint layout" in err and "features.0.* (2)" in err and "plrc_reference" in err


def test_detectron2_detector_checkpoint_lists_stem(tmp_path, r18, capsys):
    from plrc_d2.checkpoint import extract_backbone, format_key

    conv = extract_backbone(r18)
    src = tmp_path / "det.pth"
    torch.save({"model": {f"backbone.bottom_up.{format_key(k, 'd2')}": v for k, v in conv.tensors.items()}}, src)
    assert cli_main([str(src), str(tmp_path / "o.pkl")]) == 1
    assert "'backbone.bottom_up.' (d2 names)" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "missing: res4.1.conv2.weight"),
    ("shape", "wrong shape: res3.0.conv1.weight"),
    ("unmapped", "unmapped"),
    ("duplicated", "duplicated"),
    ("nan", "NaN"),
    ("block", "not contiguous"),
])
def test_broken_backbones(tmp_path, r18, capsys, case, message):
    sd = {f"module.encoder_q.{k}": v.clone() for k, v in r18.items()}
    if case == "missing":
        del sd["module.encoder_q.layer3.1.conv2.weight"]
    elif case == "shape":
        sd["module.encoder_q.layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    elif case == "unmapped":
        sd["module.encoder_q.layer1.0.se.fc.weight"] = torch.zeros(4, 4)
    elif case == "duplicated":
        sd["module.encoder_q.layer1.01.conv1.weight"] = sd["module.encoder_q.layer1.1.conv1.weight"]
    elif case == "nan":
        sd["module.encoder_q.layer4.1.bn2.running_var"][3] = float("nan")
    elif case == "block":
        for k in [k for k in sd if ".layer2.1." in k]:
            sd[k.replace(".layer2.1.", ".layer2.2.")] = sd.pop(k)
    src, out = tmp_path / "broken.pth", tmp_path / "o.pkl"
    torch.save({"state_dict": sd}, src)
    assert cli_main([str(src), str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_config_mismatch(tmp_path, r18, capsys):
    """A stock BGR / STRIDE_IN_1X1 config is refused: the weights would be fed the wrong input."""
    from detectron2 import model_zoo

    src = tmp_path / "tv.pth"
    torch.save(r18, src)
    stock = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert cli_main([str(src), str(tmp_path / "o.pkl"), "--config-file", stock]) == 1
    err = capsys.readouterr().err
    assert "INPUT.FORMAT" in err and "PIXEL_MEAN" in err and "STRIDE_IN_1X1" in err


def test_non_checkpoint_pickle(tmp_path, capsys):
    src = tmp_path / "list.pkl"
    with open(src, "wb") as f:
        pickle.dump([1, 2, 3], f)
    assert cli_main([str(src), str(tmp_path / "o.pkl")]) == 1
    assert "not a checkpoint dict" in capsys.readouterr().err
