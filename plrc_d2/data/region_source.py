"""Selects and computes the region map of one decoded image (INPUT.PLRC.REGION_SOURCE), with an optional
on-disk cache of Felzenszwalb maps (INPUT.PLRC.REGION_CACHE_DIR) keyed by file path, size, mtime and the
segmentation parameters. The maps themselves come from the pure functions in regions.py."""
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from .regions import annotation_region_map, felzenszwalb_region_map, grid_region_map

__all__ = ["RegionSettings", "RegionSource"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionSettings:
    """INPUT.PLRC region settings (plrc_d2/config.py documents each; defaults = reference values)."""

    source: str = "grid"
    grid_size: Tuple[int, int] = (4, 4)
    felzenszwalb_scale: float = 1000.0
    felzenszwalb_sigma: float = 0.8
    felzenszwalb_min_size: int = 1000
    felzenszwalb_max_side: int = 256
    cache_dir: str = ""


class RegionSource:
    """Callable: (image uint8 (H, W, 3) in `image_format`, dataset_dict) -> int32 region map covering it."""

    def __init__(self, settings: RegionSettings, image_format: str = "RGB"):
        if settings.source not in ("grid", "felzenszwalb", "annotations"):
            raise ValueError(f"Unknown region source {settings.source!r}")
        self.settings = settings
        self.image_format = image_format
        rows, cols = settings.grid_size
        self._grid = grid_region_map(rows, cols, rows, cols)  # exact (rows, cols) map, covers any image

    def __call__(self, image: np.ndarray, dataset_dict: dict) -> np.ndarray:
        source = self.settings.source
        if source == "grid":
            return self._grid
        if source == "annotations":
            return self._annotations(image, dataset_dict)
        return self._felzenszwalb_cached(image, dataset_dict.get("file_name"))

    def _annotations(self, image, dataset_dict):
        if "annotations" not in dataset_dict:
            raise ValueError(
                "INPUT.PLRC.REGION_SOURCE 'annotations' needs a labeled dataset (dicts with 'annotations'); "
                f"{dataset_dict.get('file_name')} has none. Use 'grid' or 'felzenszwalb' for unlabeled images.")
        height = int(dataset_dict.get("height", image.shape[0]))
        width = int(dataset_dict.get("width", image.shape[1]))
        return annotation_region_map(dataset_dict["annotations"], height, width)

    def _felzenszwalb(self, image):
        s = self.settings
        if self.image_format == "BGR":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return felzenszwalb_region_map(image, scale=s.felzenszwalb_scale, sigma=s.felzenszwalb_sigma,
                                       min_size=s.felzenszwalb_min_size, max_side=s.felzenszwalb_max_side)

    def _cache_path(self, file_name: str) -> Optional[str]:
        s = self.settings
        try:
            st = os.stat(file_name)
        except OSError:
            return None
        key = "|".join(str(v) for v in (os.path.abspath(file_name), st.st_size, st.st_mtime_ns,
                                        s.felzenszwalb_scale, s.felzenszwalb_sigma, s.felzenszwalb_min_size,
                                        s.felzenszwalb_max_side))
        digest = hashlib.sha1(key.encode()).hexdigest()
        return os.path.join(s.cache_dir, digest[:2], digest + ".npy")

    def _felzenszwalb_cached(self, image, file_name):
        path = self._cache_path(file_name) if self.settings.cache_dir and file_name else None
        if path and os.path.exists(path):
            try:
                return np.load(path).astype(np.int32)
            except (OSError, ValueError) as e:
                logger.warning(f"Unreadable region cache {path} ({e}); recomputing")
        region_map = self._felzenszwalb(image)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            dtype = np.uint16 if region_map.max(initial=0) < 2 ** 16 else np.int32
            np.save(tmp, region_map.astype(dtype))
            os.replace(tmp, path)  # atomic: concurrent workers never read a half-written map
        return region_map
