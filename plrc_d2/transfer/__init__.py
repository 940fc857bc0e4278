"""Fine-tuning pieces for the transfer recipes under projects/. Importing registers
`Res5ROIHeadsExtraNorm` with detectron2's ROI_HEADS_REGISTRY."""
from .roi_heads import Res5ROIHeadsExtraNorm

__all__ = ["Res5ROIHeadsExtraNorm"]
