"""The three views of one image: crops under the PLRC constraints, then photometric augmentation.

V_q (query), V_k (key), V_d (distillation key), in this order. Constraints (SPEC "Views"):
  * V_q and V_k share at least one region (read in each view at M x M cell centres);
  * |V_q n V_d| / max(|V_q|, |V_d|) >= min_overlap (original-image pixels).
Each constraint is met by re-drawing the constrained view at most `max_crop_tries` times; when every draw
fails, the view takes V_q's crop box (with its own flip and colours), which meets both constraints. Re-draws
and fallbacks are counted in `ViewSampler.stats`. With `reuse_key_as_distill`, V_k is drawn under both
constraints and V_d is V_k.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data.transforms import AugmentationList

from .augmentation import (
    RandomColorJitter, RandomGaussianBlur, RandomGrayscale, RandomResizedCrop, ViewAugInput, crop_box_px,
    crop_box_wrt_image,
)
from .points import box_overlap, regions_present, view_region_map

__all__ = ["ViewSettings", "ViewGeometry", "ViewSampler"]


@dataclass(frozen=True)
class ViewSettings:
    """INPUT.PLRC view settings (plrc_d2/config.py documents each; defaults = reference values)."""

    crop_size: int = 224
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    color_jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_prob: float = 0.5
    distill_min_overlap: float = 0.5
    max_crop_tries: int = 50
    reuse_key_as_distill: bool = False
    region_map_size: int = 56


@dataclass
class ViewGeometry:
    """One view's geometry. transform: original image -> view pixels; box_px int (4,) unflipped crop in
    original pixels; crop_box float32 (4,) wrt image (flip-aware); region_map int32 (M, M) ids in the view."""

    transform: object
    box_px: np.ndarray
    crop_box: np.ndarray
    region_map: np.ndarray


class ViewSampler:
    """Draws view geometry and photometric augmentation from an explicit numpy Generator."""

    def __init__(self, settings: ViewSettings, image_format: str = "RGB"):
        s = settings
        self.settings = s
        self.crop = RandomResizedCrop(s.crop_size, s.crop_scale, s.crop_ratio, s.flip_prob)
        self.photometric = AugmentationList([
            RandomColorJitter(*s.color_jitter, prob=s.color_jitter_prob, image_format=image_format),
            RandomGrayscale(s.grayscale_prob, image_format=image_format),
            RandomGaussianBlur(s.blur_sigma, s.blur_prob),
        ])
        self.stats: Dict[str, int] = {"crop_retries": 0, "crop_failures": 0}

    def _geometry(self, transform, image_hw, region_map) -> ViewGeometry:
        crop_box = crop_box_wrt_image(transform, image_hw[0], image_hw[1], self.settings.crop_size)
        view_map = view_region_map(region_map, crop_box, self.settings.region_map_size)
        return ViewGeometry(transform, crop_box_px(transform), crop_box, view_map)

    def _draw(self, image, region_map, rng) -> ViewGeometry:
        return self._geometry(self.crop.get_transform(image, rng), image.shape[:2], region_map)

    def _fallback(self, query: ViewGeometry, image_hw, region_map, rng) -> ViewGeometry:
        x0, y0, x1, y1 = (int(v) for v in query.box_px)
        flip = bool(rng.random() < self.settings.flip_prob)
        tfm = self.crop.transform_for_box(x0, y0, x1 - x0, y1 - y0, image_hw[0], image_hw[1], flip)
        return self._geometry(tfm, image_hw, region_map)

    def _draw_constrained(self, image, region_map, rng, accept, query) -> ViewGeometry:
        """Re-draws until accept(transform) returns the view's geometry (it returns None to reject; at most
        max_crop_tries draws), else falls back to V_q's box."""
        for attempt in range(int(self.settings.max_crop_tries)):
            geometry = accept(self.crop.get_transform(image, rng))
            if geometry is not None:
                self.stats["crop_retries"] += attempt
                return geometry
        self.stats["crop_retries"] += int(self.settings.max_crop_tries)
        self.stats["crop_failures"] += 1
        return self._fallback(query, image.shape[:2], region_map, rng)

    def sample_geometry(self, image: np.ndarray, region_map: np.ndarray,
                        rng: np.random.Generator) -> List[ViewGeometry]:
        """[V_q, V_k, V_d] geometry for an (H, W, C) image and its region map (regions.py)."""
        min_overlap = self.settings.distill_min_overlap
        query = self._draw(image, region_map, rng)
        num_ids = int(region_map.max()) + 1
        query_present = regions_present(query.region_map, num_ids)

        def overlaps(transform) -> bool:
            return box_overlap(query.box_px, crop_box_px(transform)) >= min_overlap

        def shares_region(transform) -> Optional[ViewGeometry]:
            geometry = self._geometry(transform, image.shape[:2], region_map)
            return geometry if (regions_present(geometry.region_map, num_ids) & query_present).any() else None

        def overlapping(transform) -> Optional[ViewGeometry]:
            return self._geometry(transform, image.shape[:2], region_map) if overlaps(transform) else None

        if self.settings.reuse_key_as_distill:
            key = self._draw_constrained(image, region_map, rng,
                                         lambda t: shares_region(t) if overlaps(t) else None, query)
            return [query, key, key]
        key = self._draw_constrained(image, region_map, rng, shares_region, query)
        distill = self._draw_constrained(image, region_map, rng, overlapping, query)
        return [query, key, distill]

    def render(self, image: np.ndarray, geometry: ViewGeometry, rng: np.random.Generator) -> np.ndarray:
        """The view image: uint8 (S, S, 3), geometry then colour jitter, grayscale, blur drawn from rng."""
        aug_input = ViewAugInput(np.ascontiguousarray(geometry.transform.apply_image(image)), rng)
        self.photometric(aug_input)
        return aug_input.image
