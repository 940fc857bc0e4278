"""Region-id maps over the ORIGINAL image (pure numpy, no file I/O).

A region map is an int32 array (h_m, w_m) of region ids >= 0 that covers the whole original image: map
pixel (i, j) covers the image area [j/w_m, (j+1)/w_m) x [i/h_m, (i+1)/h_m) in [0,1]^2 image coordinates.
Its resolution need not equal the image's (a 4x4 grid is a (4, 4) map; Felzenszwalb runs at reduced size),
so a map is always read through normalised coordinates (:func:`read_region_map`).

Region sources (INPUT.PLRC.REGION_SOURCE):
  grid          rows x cols equal cells, id = row * cols + col (reference default 4x4).
  felzenszwalb  skimage superpixels computed at a reduced resolution (DetCon: scale 1000, min_size 1000).
  annotations   instance masks of a labeled dataset dict. Background (pixels of no instance) is region 0,
                a region of its own: every pixel has a label, so two views always share a region and images
                without instances still train; instance k (list order) is region k + 1, painted largest
                first so that smaller objects stay visible where instances overlap.
"""
from typing import Sequence

import cv2
import numpy as np

__all__ = ["grid_region_map", "felzenszwalb_region_map", "annotation_region_map", "read_region_map"]


def grid_region_map(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """Grid regions of a (height, width) map: pixel (i, j) belongs to cell
    (floor((i + 0.5) * rows / height), floor((j + 0.5) * cols / width)) (its centre decides).

    Returns int32 (height, width), id = cell_row * cols + cell_col. `grid_region_map(rows, cols, rows, cols)`
    is the exact (rows, cols) map the mapper uses.
    """
    cell_row = np.floor((np.arange(height) + 0.5) * rows / height).astype(np.int32)
    cell_col = np.floor((np.arange(width) + 0.5) * cols / width).astype(np.int32)
    return cell_row[:, None] * cols + cell_col[None, :]


def felzenszwalb_region_map(image_rgb: np.ndarray, *, scale: float, sigma: float, min_size: int,
                            max_side: int) -> np.ndarray:
    """Felzenszwalb-Huttenlocher superpixels of an RGB uint8 image (H, W, 3), computed at a reduced size.

    The image is shrunk so that its longer side is at most `max_side` pixels; `min_size` is in pixels of
    the original image and scaled by the area ratio. Returns int32 (h, w) with h/w ~ H/W, covering the image.
    """
    from skimage.segmentation import felzenszwalb

    height, width = image_rgb.shape[:2]
    factor = min(1.0, float(max_side) / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image_rgb = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    scaled_min_size = max(1, int(round(min_size * factor * factor)))
    labels = felzenszwalb(image_rgb, scale=scale, sigma=sigma, min_size=scaled_min_size)
    return labels.astype(np.int32)


def _annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """bool (height, width) mask of one COCO-style segmentation (polygons or RLE)."""
    from detectron2.structures.masks import polygons_to_bitmask
    import pycocotools.mask as mask_util

    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64) for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        return polygons_to_bitmask(polygons, height, width)
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        return mask_util.decode(segmentation).astype(bool)
    raise ValueError(f"Unsupported segmentation type {type(segmentation)}")


def annotation_region_map(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """Region map from instance annotations (detectron2 dataset-dict format, absolute coordinates).

    Returns int32 (height, width): 0 = background, k + 1 = annotations[k] (painted in order of decreasing
    mask area, so smaller instances win where masks overlap). Annotations without "segmentation" are
    painted from their box.
    """
    region_map = np.zeros((height, width), dtype=np.int32)
    masks = []
    for k, ann in enumerate(annotations):
        if "segmentation" in ann:
            mask = _annotation_mask(ann["segmentation"], height, width)
        else:
            from detectron2.structures import BoxMode

            x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            mask = np.zeros((height, width), dtype=bool)
            mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
        masks.append((int(mask.sum()), k, mask))
    for _, k, mask in sorted(masks, key=lambda t: -t[0]):
        region_map[mask] = k + 1
    return region_map


def read_region_map(region_map: np.ndarray, points_wrt_image: np.ndarray) -> np.ndarray:
    """Region ids at points given in normalised image coordinates.

    Args:
        region_map: int (h_m, w_m), covering the image (module docstring).
        points_wrt_image: float (..., 2), (x, y) in [0,1]^2 of the original image.
    Returns:
        int32 (...), the id of the map pixel containing each point (clamped to the map).
    """
    h_m, w_m = region_map.shape
    cols = np.clip((points_wrt_image[..., 0] * w_m).astype(np.int64), 0, w_m - 1)
    rows = np.clip((points_wrt_image[..., 1] * h_m).astype(np.int64), 0, h_m - 1)
    return region_map[rows, cols].astype(np.int32, copy=False)
