"""Procedural scenes for the embedded demo data (pure numpy/cv2, explicit RNG, no file I/O).

A scene: a smooth, textured, noisy background; 1-6 labeled objects of 4 categories, each a distinct shape
with its own texture family (random colours, scale, rotation, texture period); 1-4 unlabeled distractor
blobs that borrow the same texture families (so texture alone does not name the category); objects and
distractors occlude each other in painting order. Labels are the visible instance masks.
"""
import math
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = ["CATEGORIES", "render_scene"]

CATEGORIES = ("disc", "box", "triangle", "star")  # category k: shape k with texture family k


def _random_colour(rng) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(family: int, xx: np.ndarray, yy: np.ndarray, rng) -> np.ndarray:
    """float32 weights in [0, 1] over pixel coordinates xx, yy (relative to the object centre)."""
    period = rng.uniform(5.0, 14.0)
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if family == 0:  # concentric rings
        return 0.5 + 0.5 * np.sin(2 * math.pi * np.sqrt(xx * xx + yy * yy) / period)
    if family == 1:  # stripes
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if family == 2:  # checkerboard
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2  # polka dots
    return (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)


def _shape_polygon(category: int, centre, radius: float, rng) -> np.ndarray:
    """int32 (K, 2) polygon (x, y) of a shape; categories per CATEGORIES, -1 = irregular distractor blob."""
    angle = rng.uniform(0, 2 * math.pi)
    if category == 0:
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        rx, ry = radius, radius * rng.uniform(0.6, 1.0)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    elif category == 1:
        a, b = radius, radius * rng.uniform(0.5, 1.0)
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]], dtype=np.float64)
    elif category == 2:
        t = np.array([0.0, 2.0, 4.0]) * math.pi / 3
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    elif category == 3:
        t = np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    else:
        n = int(rng.integers(6, 10))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = radius * rng.uniform(0.5, 1.0, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return np.round(pts @ rot.T + np.asarray(centre)).astype(np.int32)


def _background(height: int, width: int, rng) -> np.ndarray:
    coarse = rng.uniform(40, 220, size=(3, 3, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    weight = _texture(int(rng.integers(0, 4)), xx, yy, rng)[..., None]
    return image + (weight - 0.5) * rng.uniform(10, 40)


def _paint(image, owner, category, texture_family, owner_id, rng) -> None:
    """Paints one shape in place: image float32 (H, W, 3), owner int32 (H, W) who is visible where."""
    height, width = owner.shape
    radius = rng.uniform(0.12, 0.35) * min(height, width)
    centre = (rng.uniform(0, width), rng.uniform(0, height))
    polygon = _shape_polygon(category, centre, radius, rng)
    x0, y0 = np.clip(polygon.min(0), 0, [width, height])
    x1, y1 = np.clip(polygon.max(0) + 1, 0, [width, height])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(mask, [polygon - np.array([x0, y0])], 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    weight = _texture(texture_family, xx - centre[0], yy - centre[1], rng)[..., None]
    colour_a, colour_b = _random_colour(rng), _random_colour(rng)
    gradient = (xx - centre[0]) * rng.uniform(-1, 1) + (yy - centre[1]) * rng.uniform(-1, 1)
    shade = 1.0 + 0.25 * gradient[..., None] / radius  # a linear lighting gradient across the object
    patch = (colour_a * (1 - weight) + colour_b * weight) * shade
    inside = mask.astype(bool)
    image[y0:y1, x0:x1][inside] = patch[inside]
    owner[y0:y1, x0:x1][inside] = owner_id


def _instances(owner: np.ndarray, categories: List[int], min_area: int) -> List[Dict]:
    """COCO-style annotations (polygons, bbox XYWH, area) of the visible part of each labeled object."""
    annotations = []
    for k, category in enumerate(categories):
        visible = (owner == k).astype(np.uint8)
        area = int(visible.sum())
        if area < min_area:
            continue
        contours, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours
                    if len(c) >= 3 and cv2.contourArea(c) >= 4]
        if not polygons:
            continue
        x, y, w, h = cv2.boundingRect(visible)
        annotations.append({"category_id": category + 1, "segmentation": polygons,
                            "bbox": [float(x), float(y), float(w), float(h)], "area": float(area), "iscrowd": 0})
    return annotations


def render_scene(rng: np.random.Generator, size_range: Tuple[int, int] = (128, 256), min_area: int = 40,
                 shape: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, List[Dict]]:
    """One scene. Returns (RGB uint8 (H, W, 3), COCO annotations without ids); H, W are drawn from
    size_range unless `shape` = (H, W) is given."""
    height, width = shape or tuple(int(rng.integers(size_range[0], size_range[1] + 1)) for _ in range(2))
    image = _background(height, width, rng)
    owner = np.full((height, width), -1, dtype=np.int32)
    num_objects, num_distractors = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    kinds = rng.permutation([1] * num_objects + [0] * num_distractors)  # 1 = labeled object
    categories: List[int] = []
    for labeled in kinds:
        if labeled:
            category = int(rng.integers(0, len(CATEGORIES)))
            _paint(image, owner, category, category, len(categories), rng)
            categories.append(category)
        else:
            _paint(image, owner, -1, int(rng.integers(0, len(CATEGORIES))), -2, rng)
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, _instances(owner, categories, min_area)
