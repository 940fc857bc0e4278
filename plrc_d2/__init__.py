"""plrc_d2: Point-Level Region Contrast pre-training for Detectron2.

Importing the package registers the PLRC meta-architecture, its ROI heads and the datasets.
"""
from .config import add_plrc_config, validate_plrc_config
from . import data, modeling, transfer  # noqa: F401  (registration side effects)

__all__ = ["add_plrc_config", "validate_plrc_config"]
