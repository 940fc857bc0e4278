"""Pictures of what PLRC samples and learns: region maps, points, matched cells, point affinities.

Pure drawing: numpy arrays in, an RGB uint8 panel (H, W, 3) out. No config, no model, no file I/O;
`plrc_d2.engine.vis_hook` gathers the arrays from a mapped sample and a model.

Shorthand: S view size, R regions per image, P points per region, Q query points, M map size.
Coordinate frames: `*_wrt_view` are (x, y) in [0, 1]^2 of a view (pixel centres at (i + 0.5) / S);
`*_wrt_image` are (x, y) in [0, 1]^2 of the original image; a crop box (x0, y0, x1, y1) is given
wrt the image, with x0 > x1 when the view is flipped (the mapper -> model contract).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import ConnectionPatch, Rectangle
from skimage.segmentation import find_boundaries

from plrc_d2.data.points import view_to_image
from plrc_d2.data.regions import read_region_map

__all__ = [
    "VIEW_NAMES", "PanelData", "AffinityData", "image_to_view", "crop_region_map",
    "region_colors", "overlay_regions", "overlay_heatmap", "panel_size", "draw_point_panel",
]

VIEW_NAMES = ("V_q", "V_k", "V_d")
_VIEW_EDGE_COLORS = ("red", "lime", "deepskyblue")
_COLUMNS = 4
_DPI = 100
_TITLE_PX = 40  # panel title band, pixels
_TILE_TITLE_PX = 16  # per-tile title band, pixels
_PALETTE = np.array(colormaps["tab20"].colors)  # (20, 3) float in [0, 1]


@dataclass
class AffinityData:
    """Cosine-similarity maps of Q query points of V_q.

    query_points_wrt_view: float (Q, 2), points of V_q.
    maps: name -> float (Q, H, W), the similarity of each query embedding to every location of the
        named target: "V_q", "V_k", "V_d" (S x S views) and "image" (the whole image).
    """
    query_points_wrt_view: np.ndarray
    maps: Dict[str, np.ndarray]


@dataclass
class PanelData:
    """One mapped sample, as numpy arrays (RGB uint8 images).

    views: 3 arrays (S, S, 3) in the order V_q, V_k, V_d.
    crop_boxes_wrt_image: float (3, 4).
    points_wrt_view: float (2, R, P, 2), points of V_q and V_k.
    region_valid: bool (R,); region_ids: int (R,), the region of each point row (-1 = none).
    image: (H, W, 3) original image; region_map: int region ids covering it, any resolution
        (plrc_d2.data.regions: map pixel (i, j) covers [j/w, (j+1)/w) x [i/h, (i+1)/h) of [0, 1]^2).
    matched_cells: (idx_q, idx_d), int (n,) flat indices r * M + c of matched V_q / V_d cells.
    """
    views: List[np.ndarray]
    crop_boxes_wrt_image: np.ndarray
    points_wrt_view: np.ndarray
    region_valid: np.ndarray
    region_ids: np.ndarray
    image: np.ndarray
    region_map: np.ndarray
    matched_cells: Tuple[np.ndarray, np.ndarray]
    map_size: int
    affinity: Optional[AffinityData] = None
    notes: List[str] = field(default_factory=list)


def image_to_view(points_wrt_image: np.ndarray, crop_box_wrt_image) -> np.ndarray:
    """Inverse of `view_to_image`; a result outside [0, 1]^2 means the point is not in the view."""
    x0, y0, x1, y1 = np.asarray(crop_box_wrt_image, dtype=np.float64)
    p = np.asarray(points_wrt_image, dtype=np.float64)
    return np.stack([(p[..., 0] - x0) / (x1 - x0), (p[..., 1] - y0) / (y1 - y0)], axis=-1)


def crop_region_map(region_map: np.ndarray, crop_box_wrt_image, size) -> np.ndarray:
    """A region map covering the original image (any resolution: map pixel (i, j) covers
    [j/w, (j+1)/w) x [i/h, (i+1)/h) of [0, 1]^2) read at the pixel centres of a view (nearest).

    size: S or (height, width) of the output. Returns int (height, width). With the box (0, 0, 1, 1)
    it resamples the map to an image's size."""
    height, width = (size, size) if np.isscalar(size) else size
    xs, ys = (np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (height, width, 2) x, y
    return read_region_map(region_map, view_to_image(grid, crop_box_wrt_image))


def region_colors(region_ids) -> np.ndarray:
    """Fixed colour per region id (tab20, cycled): float (..., 3) in [0, 1]."""
    return _PALETTE[np.asarray(region_ids, dtype=np.int64) % len(_PALETTE)]


def overlay_regions(image: np.ndarray, region_map: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Tints each region of an (H, W, 3) uint8 image with its colour and draws region borders in
    white. region_map: int (H, W), ids < 0 are left untinted. Returns uint8 (H, W, 3)."""
    if image.shape[:2] != region_map.shape:
        raise ValueError(f"image {image.shape[:2]} and region map {region_map.shape} differ in size")
    out = image.astype(np.float64) / 255.0
    tinted = region_map >= 0
    out[tinted] = (1 - alpha) * out[tinted] + alpha * region_colors(region_map[tinted])
    out[find_boundaries(region_map, mode="thick")] = 1.0
    return np.round(out * 255).astype(np.uint8)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6,
                    value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Blends a jet-coloured heat map over a darkened (H, W, 3) uint8 image. heat: float (H, W);
    value_range defaults to its own min/max. Returns uint8 (H, W, 3)."""
    if image.shape[:2] != heat.shape:
        raise ValueError(f"image {image.shape[:2]} and heat map {heat.shape} differ in size")
    lo, hi = value_range if value_range is not None else (float(heat.min()), float(heat.max()))
    norm = np.clip((heat - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    colored = colormaps["jet"](norm)[..., :3]
    out = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * colored
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def panel_size(num_query_points: int, tile: int) -> Tuple[int, int]:
    """(height, width) in pixels of the panel `draw_point_panel` returns."""
    rows = 2 + num_query_points
    return _TITLE_PX + rows * (tile + _TILE_TITLE_PX), _COLUMNS * tile


class _Layout:
    """Pixel-exact grid of tiles: each tile has a title band above a tile x tile image area."""

    def __init__(self, fig: Figure, tile: int):
        self.fig, self.tile = fig, tile
        self.height, self.width = fig.bbox.height, fig.bbox.width

    def axes(self, row: int, col: int, span: int = 1):
        left = col * self.tile
        top = _TITLE_PX + row * (self.tile + _TILE_TITLE_PX) + _TILE_TITLE_PX
        rect = [(left + 2) / self.width, 1 - (top + self.tile - 2) / self.height,
                (span * self.tile - 4) / self.width, (self.tile - 4) / self.height]
        ax = self.fig.add_axes(rect)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax


def _show(ax, image: np.ndarray, title: str):
    """imshow in [0, 1]^2 coordinates (x right, y down), keeping the image's aspect ratio."""
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, 1, 1, 0), aspect=h / w, interpolation="nearest")
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_title(title, fontsize=7, pad=2)


def _draw_views(layout: _Layout, data: PanelData) -> list:
    """Row 0: the three views with regions (points on V_q, V_k) and the original image with boxes."""
    axes = []
    for v, (name, view) in enumerate(zip(VIEW_NAMES, data.views)):
        ax = layout.axes(0, v)
        # Regions are drawn at display resolution so their borders stay thin on small views.
        regions = crop_region_map(data.region_map, data.crop_boxes_wrt_image[v], layout.tile)
        shown = cv2.resize(view, (layout.tile, layout.tile), interpolation=cv2.INTER_LINEAR)
        flipped = " (flipped)" if data.crop_boxes_wrt_image[v][0] > data.crop_boxes_wrt_image[v][2] else ""
        _show(ax, overlay_regions(shown, regions), f"{name}: regions" + (" + points" if v < 2 else "") + flipped)
        for spine in ax.spines.values():
            spine.set_edgecolor(_VIEW_EDGE_COLORS[v])
            spine.set_linewidth(2)
        if v < 2:
            for r in np.flatnonzero(data.region_valid):
                pts = data.points_wrt_view[v, r]
                ax.scatter(pts[:, 0], pts[:, 1], s=14, color=region_colors(data.region_ids[r]), edgecolors="black",
                           linewidths=0.6, marker="o" if v == 0 else "s")
        axes.append(ax)
    ax = layout.axes(0, 3)
    regions = crop_region_map(data.region_map, (0.0, 0.0, 1.0, 1.0), data.image.shape[:2])
    _show(ax, overlay_regions(data.image, regions), "image: regions + view boxes")
    for v, box in enumerate(data.crop_boxes_wrt_image):
        x0, x1 = sorted((box[0], box[2]))
        ax.add_patch(Rectangle((x0, box[1]), x1 - x0, box[3] - box[1], fill=False,
                               edgecolor=_VIEW_EDGE_COLORS[v], linewidth=1.5))
    return axes


def _link_shared_regions(fig: Figure, ax_q, ax_k, data: PanelData):
    """A dashed line from the centroid of each shared region's V_q points to its V_k points."""
    for r in np.flatnonzero(data.region_valid):
        cq, ck = data.points_wrt_view[0, r].mean(0), data.points_wrt_view[1, r].mean(0)
        fig.add_artist(ConnectionPatch(xyA=tuple(cq), coordsA="data", axesA=ax_q, xyB=tuple(ck),
                                       coordsB="data", axesB=ax_k, color=region_colors(data.region_ids[r]),
                                       linestyle="--", linewidth=1.2))


def _draw_matches(layout: _Layout, data: PanelData, shown_per_side: int = 8):
    """Row 1: matched V_q / V_d cells; a pair shares a colour, set by its position in the image.
    Only V_q cells on a stride grid (about shown_per_side^2 of them) are drawn, so the view stays
    visible at M = 56; each square is drawn stride cells wide."""
    m = data.map_size
    stride = max(1, m // shown_per_side)
    idx_q, idx_d = (np.asarray(i, dtype=np.int64) for i in data.matched_cells)
    on_grid = (idx_q // m % stride == stride // 2) & (idx_q % m % stride == stride // 2)
    centres = {name: np.stack([(idx[on_grid] % m + 0.5) / m, (idx[on_grid] // m + 0.5) / m], axis=-1)
               for name, idx in (("V_q", idx_q), ("V_d", idx_d))}  # (n, 2) x, y
    wrt_image = view_to_image(centres["V_q"], data.crop_boxes_wrt_image[0])
    # Hue follows image x, brightness image y, stretched over the drawn cells' extent.
    lo = wrt_image.min(0) if len(wrt_image) else 0.0
    position = (wrt_image - lo) / np.maximum(np.ptp(wrt_image, 0) if len(wrt_image) else 1.0, 1e-9)
    colors = hsv_to_rgb(np.stack([0.8 * position[:, 0], np.ones(len(position)), 0.35 + 0.65 * position[:, 1]], -1))
    side_pt = 0.5 * stride * layout.tile / m * 72.0 / _DPI  # marker side, points
    shown = f", {len(position)} drawn" if stride > 1 else ""
    for col, (v, name) in enumerate(((0, "V_q"), (2, "V_d"))):
        ax = layout.axes(1, col)
        _show(ax, data.views[v], f"{name}: {len(idx_q)} cell pairs{shown}")
        if len(position):
            ax.scatter(centres[name][:, 0], centres[name][:, 1], s=side_pt ** 2, c=colors, marker="s",
                       edgecolors="black", linewidths=0.4)
    ax = layout.axes(1, 2, span=2)
    ax.axis("off")
    ax.text(0.02, 0.98, "\n".join(data.notes), va="top", ha="left", fontsize=7, family="monospace",
            transform=ax.transAxes, wrap=True)


def _mark(ax, points_wrt_target: np.ndarray):
    """White stars at the (n, 2) points that lie inside the target ([0, 1]^2)."""
    inside = np.all((points_wrt_target >= 0) & (points_wrt_target <= 1), axis=-1)
    if inside.any():
        p = points_wrt_target[inside]
        ax.scatter(p[:, 0], p[:, 1], s=60, marker="*", color="white", edgecolors="black", linewidths=0.8)


def _draw_affinities(layout: _Layout, data: PanelData):
    """Rows 2..: per query point of V_q, its cosine similarity over V_q, V_k, V_d and the image."""
    aff = data.affinity
    query_wrt_image = view_to_image(aff.query_points_wrt_view, data.crop_boxes_wrt_image[0])  # (Q, 2)
    targets = [(name, data.views[v], image_to_view(query_wrt_image, data.crop_boxes_wrt_image[v]))
               for v, name in enumerate(VIEW_NAMES)] + [("image", data.image, query_wrt_image)]
    for q in range(len(aff.query_points_wrt_view)):
        for col, (name, picture, query_wrt_target) in enumerate(targets):
            heat = aff.maps[name][q]
            h, w = picture.shape[:2]
            if heat.shape != (h, w):
                raise ValueError(f"affinity map over {name} is {heat.shape}, its picture is {(h, w)}")
            ax = layout.axes(2 + q, col)
            _show(ax, overlay_heatmap(picture, heat),
                  f"q{q} over {name}: cos [{heat.min():.2f}, {heat.max():.2f}]")
            _mark(ax, query_wrt_target[q:q + 1])


def draw_point_panel(data: PanelData, title: str, tile: int = 192) -> np.ndarray:
    """Renders the panel; returns RGB uint8 of shape `panel_size(Q, tile) + (3,)`.

    Row 0: V_q, V_k, V_d with their region maps (borders white), the shared regions' points in their
    region's colour (circles on V_q, squares on V_k, a dashed line joining the same region's points),
    and the original image with the three crop boxes (red V_q, green V_k, blue V_d).
    Row 1: the V_q / V_d cell pairs of the distillation loss, a pair drawn in the same colour; notes.
    Rows 2..: for each query point (white star), its cosine-similarity map over V_q, V_k, V_d and
    the whole image (jet: red = most similar, each map scaled to its own range, printed above it).
    """
    num_queries = 0 if data.affinity is None else len(data.affinity.query_points_wrt_view)
    height, width = panel_size(num_queries, tile)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    fig.text(0.5, 1 - 0.5 * _TITLE_PX / height, title, ha="center", va="center", fontsize=9, wrap=True)
    layout = _Layout(fig, tile)
    view_axes = _draw_views(layout, data)
    _link_shared_regions(fig, view_axes[0], view_axes[1], data)
    _draw_matches(layout, data)
    if data.affinity is not None:
        _draw_affinities(layout, data)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (height, width):  # figure sizes are float inches; pixel rounding must not drift
        raise RuntimeError(f"rendered {rgba.shape[:2]}, expected {(height, width)}")
    return np.ascontiguousarray(rgba[..., :3])
