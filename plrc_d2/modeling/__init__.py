"""PLRC modeling: importing this package registers the PLRC meta-architecture."""
from .losses import affinity_distillation_loss, image_infonce_loss, point_region_contrast_loss
from .matching import match_cells
from .meta_arch import PLRC, PLRCParams

__all__ = ["PLRC", "PLRCParams", "match_cells", "image_infonce_loss", "point_region_contrast_loss",
           "affinity_distillation_loss"]
