"""PLRCDatasetMapper: one dataset dict (a file name) -> three augmented views, region points, tensors only."""
import logging
from typing import Dict, Optional

import cv2
import numpy as np
import torch
from detectron2.config import configurable

from .image_io import BadImageError, read_image_uint8
from .points import points_in_regions, shared_region_points
from .region_source import RegionSettings, RegionSource
from .views import ViewSampler, ViewSettings

__all__ = ["PLRCDatasetMapper"]

logger = logging.getLogger(__name__)


class PLRCDatasetMapper:
    """Maps a dataset dict {"file_name", ...} to the PLRC training sample (the mapper -> model contract).

    Shorthand: V = 3 views, R = NUM_SHARED_REGIONS rows, P = POINTS_PER_REGION, S = CROP_SIZE,
    M = REGION_MAP_SIZE. Output (the input dict's keys are kept, "annotations" dropped)::

        dataset_dict["views"]: list of V dicts in fixed order (0 = V_q, 1 = V_k, 2 = V_d)
           "image":    uint8 (3, S, S), channel order INPUT.FORMAT
           "points":   float32 (R, P, 2), (x, y) in [0,1]^2 of this view, pixel centres at (i+0.5)/S
           "crop_box": float32 (4,), x0, y0, x1, y1 of this view in [0,1]^2 of the original image
                       (x swapped if flipped): p_wrt_image = (x0, y0) + p_wrt_view * (x1 - x0, y1 - y0)
        dataset_dict["region_valid"]: bool (R,)   row r is the same region in V_q and V_k
        dataset_dict["region_ids"]:   int64 (R,)  the region id of row r in the region map (-1 if invalid)

    Labels for the point loss are (image, row): row r of V_q and row r of V_k hold P points each of the
    same region (the shared regions are picked uniformly at random, up to R, and fill the first rows);
    rows r >= the number of regions shared by V_q and V_k have region_valid False and points
    at (0.5, 0.5) (finite, in range; the model ignores them). Points lie at centres of the M x M cells of
    their view ((j + 0.5) / M, (i + 0.5) / M) and are drawn uniformly among the cells of their region
    (without replacement when the region has >= P cells). V_d's rows hold points of the same regions where
    visible in V_d, else (0.5, 0.5); the model does not use them. With REUSE_KEY_AS_DISTILL, views[2] is
    views[1] (the same tensors) for every sample, so the model may skip V_d's forward.

    Regions (INPUT.PLRC.REGION_SOURCE, regions.py): "grid" cells, "felzenszwalb" superpixels, or
    "annotations": each instance mask of a labeled dict is a region and the background is region 0 (a
    region of its own, so every pixel has a label and images without instances still train).

    Views: one RandomResizedCrop(+flip) transform per view is applied to the image and, through the same
    geometry (the crop box), to the region map and points. V_q/V_k share >= 1 region; V_q/V_d overlap
    >= DISTILL_MIN_OVERLAP (views.py; re-draws and fallbacks are counted in `self.stats`).

    Randomness: `__call__(dataset_dict, rng)` draws everything from the given numpy Generator (the train
    stream passes one seeded by (seed, sample position)); without one, a fresh OS-seeded Generator.
    A file that cannot be decoded is skipped: a warning, `self.stats["skipped_files"] += 1`, returns None.
    """

    @configurable
    def __init__(self, *, image_format: str = "RGB", views: ViewSettings = ViewSettings(),
                 regions: RegionSettings = RegionSettings(), num_shared_regions: int = 1,
                 points_per_region: int = 16):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"PLRCDatasetMapper needs INPUT.FORMAT 'RGB' or 'BGR', got {image_format!r}")
        self.image_format = image_format
        # Decoding and augmentation run in cv2's BGR order (no full-image colour conversion; the colour ops
        # are channel-order aware); the output tensor takes INPUT.FORMAT's order.
        self.num_shared_regions = int(num_shared_regions)
        self.points_per_region = int(points_per_region)
        self.view_sampler = ViewSampler(views, "BGR")
        self.region_source = RegionSource(regions, "BGR")
        self._skipped = 0

    @classmethod
    def from_config(cls, cfg):
        i = cfg.INPUT.PLRC
        views = ViewSettings(
            crop_size=int(i.CROP_SIZE), crop_scale=tuple(i.CROP_SCALE), crop_ratio=tuple(i.CROP_RATIO),
            flip_prob=float(i.FLIP_PROB), color_jitter=tuple(i.COLOR_JITTER),
            color_jitter_prob=float(i.COLOR_JITTER_PROB), grayscale_prob=float(i.GRAYSCALE_PROB),
            blur_sigma=tuple(i.BLUR_SIGMA), blur_prob=float(i.BLUR_PROB),
            distill_min_overlap=float(i.DISTILL_MIN_OVERLAP), max_crop_tries=int(i.MAX_CROP_TRIES),
            reuse_key_as_distill=bool(i.REUSE_KEY_AS_DISTILL), region_map_size=int(i.REGION_MAP_SIZE))
        regions = RegionSettings(
            source=i.REGION_SOURCE, grid_size=tuple(int(v) for v in i.GRID_SIZE),
            felzenszwalb_scale=float(i.FELZENSZWALB_SCALE), felzenszwalb_sigma=float(i.FELZENSZWALB_SIGMA),
            felzenszwalb_min_size=int(i.FELZENSZWALB_MIN_SIZE), felzenszwalb_max_side=int(i.FELZENSZWALB_MAX_SIDE),
            cache_dir=i.REGION_CACHE_DIR)
        return {"image_format": cfg.INPUT.FORMAT, "views": views, "regions": regions,
                "num_shared_regions": int(i.NUM_SHARED_REGIONS), "points_per_region": int(i.POINTS_PER_REGION)}

    @property
    def stats(self) -> Dict[str, int]:
        """Counters since construction: skipped_files, crop_retries, crop_failures."""
        return {"skipped_files": self._skipped, **self.view_sampler.stats}

    def _read(self, dataset_dict) -> Optional[np.ndarray]:
        try:
            image = read_image_uint8(dataset_dict["file_name"], "BGR")
        except BadImageError as e:
            self._skipped += 1
            logger.warning(f"Skipping unreadable image ({self._skipped} skipped so far): {e}")
            return None
        expected = (dataset_dict.get("height"), dataset_dict.get("width"))
        if self.region_source.settings.source == "annotations" and None not in expected \
                and tuple(image.shape[:2]) != expected:
            self._skipped += 1
            logger.warning(f"Skipping {dataset_dict['file_name']}: decoded size {image.shape[:2]} differs from "
                           f"the annotated size {expected} ({self._skipped} skipped so far)")
            return None
        return image

    def __call__(self, dataset_dict: dict, rng: Optional[np.random.Generator] = None) -> Optional[dict]:
        rng = np.random.default_rng() if rng is None else rng
        image = self._read(dataset_dict)
        if image is None:
            return None
        region_map = self.region_source(image, dataset_dict)
        geometry = self.view_sampler.sample_geometry(image, region_map, rng)
        picked = shared_region_points(geometry[0].region_map, geometry[1].region_map,
                                      self.num_shared_regions, self.points_per_region, rng)
        points = [picked["points_q"], picked["points_k"]]
        if geometry[2] is geometry[1]:
            views = self._views(image, geometry[:2], points, rng)
            views.append(views[1])
        else:
            points.append(points_in_regions(geometry[2].region_map, picked["region_ids"],
                                            self.points_per_region, rng))
            views = self._views(image, geometry, points, rng)
        out = {k: v for k, v in dataset_dict.items() if k != "annotations"}
        out["views"] = views
        out["region_valid"] = torch.from_numpy(picked["region_valid"])
        out["region_ids"] = torch.from_numpy(picked["region_ids"])
        return out

    def _views(self, image, geometry, points, rng):
        views = []
        for geo, pts in zip(geometry, points):
            channels = cv2.split(self.view_sampler.render(image, geo, rng))  # B, G, R planes (S, S)
            if self.image_format == "RGB":
                channels = channels[::-1]
            views.append({
                "image": torch.from_numpy(np.stack(channels)),  # (3, S, S); faster than a transpose copy
                "points": torch.from_numpy(pts),
                "crop_box": torch.from_numpy(geo.crop_box.copy()),
            })
        return views
