#!/usr/bin/env python
"""Convert a PLRC (or MoCo / torchvision) ResNet checkpoint for detectron2 fine-tuning.

    python tools/convert_plrc_to_d2.py output/model_final.pth plrc_r50.pkl
    python tools/convert_plrc_to_d2.py plrc_reference.pth.tar plrc_r50.pkl --config-file \
        projects/FasterRCNN-VOC/configs/faster_rcnn_R_50_C4_voc_plrc.yaml
    python tools/convert_plrc_to_d2.py output/model_final.pth r50_tv.pth --format torchvision

Inputs (detected; anything else fails and lists what the file holds): a plrc_d2 pre-training
checkpoint ({"model": ...}), the reference PLRC release ({"state_dict": module.encoder_q.enc.*}),
MoCo-style ({"state_dict": module.encoder_q.*}), a torchvision or detectron2 ResNet state dict.
--encoder momentum converts the momentum (key) encoder instead of the online one.

Output --format d2: {"model": numpy arrays named stem.* / res2..res5.*, "__author__": "plrc_d2",
"matching_heuristics": True}. Stock C4 and FPN configs load it, provided the config sets:
    INPUT.FORMAT RGB
    MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]   MODEL.PIXEL_STD [58.395, 57.12, 57.375]
    MODEL.RESNETS.STRIDE_IN_1X1 False
    MODEL.RESNETS.DEPTH / RES2_OUT_CHANNELS as printed (R-18/34: RES2_OUT_CHANNELS 64)
and, for the MoCo detection protocol, BACKBONE.FREEZE_AT 0 with SyncBN (projects/*/configs do all this).
Output --format torchvision: a state dict torchvision.models.resnetNN().load_state_dict(strict=False)
loads with only fc.* missing.

Exit status 1, with a message and nothing written, when any backbone tensor is unmapped, duplicated,
non-finite or of the wrong shape, when the file is not a checkpoint, or when --depth / --config-file
do not fit the weights.
"""
import os
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from importing detectron2
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plrc_d2.checkpoint.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
