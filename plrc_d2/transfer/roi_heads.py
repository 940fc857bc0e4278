"""ROI heads used by the transfer recipes (projects/FasterRCNN-VOC)."""
from torch import nn

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

__all__ = ["Res5ROIHeadsExtraNorm"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """The C4 head of the MoCo detection protocol: detectron2's Res5ROIHeads plus one extra norm layer
    (MODEL.RESNETS.NORM, e.g. SyncBN) after the res5 stage, as MoCo's detection recipe adds for
    self-supervised backbones whose feature statistics differ from supervised ones.

    Tensors: `res5.0-2.*` as in Res5ROIHeads (filled by converted weights), plus `res5.norm.*`
    (new, initialised as a fresh norm: weight 1, bias 0).
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels
