"""Point panels from a model and a mapped sample: the training-time hook and the pieces
tools/visualize_points.py shares with it.

Shorthand: S view size, D embedding dim, h x w feature map, Q query points, M distillation map size.
Points are (x, y) in [0, 1]^2 of a view, pixel centres at (i + 0.5) / S; embeddings are read at them
with bilinear `grid_sample(align_corners=False)`, as the model reads its points.
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from PIL import Image

from plrc_d2.engine.hooks import _unwrap
from plrc_d2.visualization import AffinityData, PanelData, draw_point_panel

__all__ = ["PanelOptions", "point_affinity_maps", "default_query_points", "compute_panel_data",
           "map_sample", "PointPanelHook"]

logger = logging.getLogger(__name__)

# Query points beyond the sampled regions' first points, wrt V_q (a fixed spread, so panels compare).
_FILL_QUERY_POINTS = ((0.25, 0.25), (0.75, 0.75), (0.75, 0.25), (0.25, 0.75), (0.5, 0.5))


@dataclass
class PanelOptions:
    """num_query_points: Q; map_size / match_radius: M and the cell-matching radius of the
    distillation loss; embedding: "dense" (head g, D = EMBED_DIM) or "distill" (head h, u);
    momentum: read the momentum encoder instead of the online one; whole_image_scale: the whole image
    is encoded at this x S pixels (square); display_max_side: the image tile's longer side, pixels."""
    num_query_points: int = 4
    map_size: int = 56
    match_radius: float = 0.5
    embedding: str = "dense"
    momentum: bool = False
    whole_image_scale: int = 2
    display_max_side: int = 384


def point_affinity_maps(query_map: torch.Tensor, query_points_wrt_view: torch.Tensor,
                        key_map: torch.Tensor, out_size) -> torch.Tensor:
    """Cosine similarity of query embeddings to every location of a key map.

    Args:
        query_map: (D, h, w) embeddings of the query view.
        query_points_wrt_view: (Q, 2) points of the query view.
        key_map: (D, h', w') embeddings of the target (another view, or the whole image).
        out_size: (H, W) of the returned maps; the key map is upsampled bilinearly
            (align_corners=False), so pixel centre (i + 0.5) / H of the output reads the same spot
            that `grid_sample` reads for a point there.
    Returns:
        float64 (Q, H, W) in [-1, 1]. Computed in float64 so that a query's own location is its
        exact maximum on its own view (the similarity is 1 there).
    """
    query_map, key_map = query_map.double(), key_map.double()
    grid = (2 * query_points_wrt_view.double() - 1).view(1, 1, -1, 2)
    # padding_mode="border" clamps like F.interpolate does at the map's edge.
    queries = F.grid_sample(query_map[None], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0, :, 0].t()  # (Q, D)
    keys = F.interpolate(key_map[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return torch.einsum("qd,dhw->qhw", F.normalize(queries, dim=1), F.normalize(keys, dim=0))


def default_query_points(points_wrt_view_q: np.ndarray, region_valid: np.ndarray, num: int,
                         size: int) -> np.ndarray:
    """Q = num query points of V_q: the first point of each valid sampled region, then a fixed
    spread, snapped to pixel centres of the S = size view. float64 (num, 2)."""
    chosen = [tuple(points_wrt_view_q[r, 0]) for r in np.flatnonzero(region_valid)][:num]
    chosen += list(_FILL_QUERY_POINTS[: max(0, num - len(chosen))])
    if len(chosen) < num:
        raise ValueError(f"at most {len(_FILL_QUERY_POINTS)} query points beyond the sampled regions")
    pixels = np.clip(np.floor(np.asarray(chosen, dtype=np.float64) * size), 0, size - 1)
    return (pixels + 0.5) / size


def _embed(model, images, options: PanelOptions) -> torch.Tensor:
    """(N, D, h, w) embeddings of a list of uint8 (3, s, s) images, from the head options names."""
    if options.embedding == "dense":
        return model.dense_embeddings(images, momentum=options.momentum)
    if options.embedding == "distill":
        return model.distill_embeddings(images, momentum=options.momentum)
    raise ValueError(f"embedding must be 'dense' or 'distill', got {options.embedding!r}")


def _to_rgb(image: np.ndarray, input_format: str) -> np.ndarray:
    """(H, W, 3) uint8 in the mapper's format (RGB or BGR) -> RGB."""
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"point panels need INPUT.FORMAT RGB or BGR, got {input_format!r}")
    return np.ascontiguousarray(image[..., ::-1]) if input_format == "BGR" else image


def _display_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrinks (H, W, 3) so its longer side is at most max_side pixels (keeps the aspect ratio)."""
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor == 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def _affinities(model, views, image: np.ndarray, display: np.ndarray, query_points: np.ndarray,
                options: PanelOptions) -> AffinityData:
    """Affinity maps of the query points over V_q, V_k, V_d (each S x S) and the whole image."""
    size = views[0].shape[-1]
    whole_side = options.whole_image_scale * size
    whole = cv2.resize(image, (whole_side, whole_side), interpolation=cv2.INTER_AREA)
    whole = torch.as_tensor(np.ascontiguousarray(whole.transpose(2, 0, 1)))
    maps_views = _embed(model, list(views), options).cpu()  # (3, D, h, w)
    map_whole = _embed(model, [whole.to(views[0].device)], options).cpu()[0]
    q = torch.as_tensor(query_points)
    maps = {name: point_affinity_maps(maps_views[0], q, maps_views[v], (size, size)).numpy()
            for v, name in enumerate(("V_q", "V_k", "V_d"))}
    maps["image"] = point_affinity_maps(maps_views[0], q, map_whole, display.shape[:2]).numpy()
    return AffinityData(query_points, maps)


def compute_panel_data(model, sample: dict, image: np.ndarray, region_map: np.ndarray, *,
                       input_format: str, options: PanelOptions, notes=()) -> PanelData:
    """Everything a panel shows, for one mapped sample.

    Args:
        model: a PLRC model (`dense_embeddings` / `distill_embeddings`), or None for no affinities.
        sample: a PLRCDatasetMapper output (DESIGN.md contract: "views" V_q, V_k, V_d, "region_valid").
        image: (H, W, 3) uint8 original image in `input_format` channel order.
        region_map: int region ids covering the original image (any resolution).
    """
    from plrc_d2.modeling.matching import match_cells

    views = [v["image"] for v in sample["views"]]
    boxes = np.stack([v["crop_box"].cpu().numpy() for v in sample["views"]]).astype(np.float64)
    points = np.stack([sample["views"][v]["points"].cpu().numpy() for v in (0, 1)])
    valid = sample["region_valid"].cpu().numpy().astype(bool)
    region_ids = sample["region_ids"].cpu().numpy()
    idx_q, idx_d = match_cells(sample["views"][0]["crop_box"], sample["views"][2]["crop_box"],
                               options.map_size, options.match_radius)
    display = _display_image(image, options.display_max_side)
    affinity = None
    if model is not None:
        query = default_query_points(points[0], valid, options.num_query_points, views[0].shape[-1])
        affinity = _affinities(model, views, image, display, query, options)
    return PanelData(
        views=[_to_rgb(v.permute(1, 2, 0).cpu().numpy(), input_format) for v in views],
        crop_boxes_wrt_image=boxes, points_wrt_view=points, region_valid=valid, region_ids=region_ids,
        image=_to_rgb(display, input_format), region_map=np.asarray(region_map),
        matched_cells=(np.asarray(idx_q.cpu()), np.asarray(idx_d.cpu())), map_size=options.map_size,
        affinity=affinity, notes=list(notes) + [f"matched V_q/V_d cell pairs: {len(idx_q)} "
                                                f"(M x M = {options.map_size ** 2} cells per view)",
                                                f"shared regions with points: {int(valid.sum())} of {len(valid)}"])


def map_sample(mapper, dataset_dict: dict, seed: int) -> Optional[dict]:
    """Maps one dataset dict with a Generator seeded by `seed` (the same views every call) and
    returns {"sample": mapper output, "image": (H, W, 3) uint8 original in the mapper's format,
    "region_map": its region map}, or None when the mapper skips the file (unreadable)."""
    from plrc_d2.data.image_io import read_image_uint8

    sample = mapper(dataset_dict, np.random.default_rng(seed))
    if sample is None:
        return None
    image = read_image_uint8(dataset_dict["file_name"], mapper.image_format)
    return {"sample": sample, "image": image, "region_map": mapper.region_source(image, dataset_dict)}


def render_panel(model, mapped: dict, *, input_format: str, options: PanelOptions, title: str,
                 notes=(), tile: int = 192) -> np.ndarray:
    """The RGB uint8 panel of one `map_sample` result. model None: no affinity rows. The model's
    embedding helpers run without gradients and with BN on running statistics."""
    data = compute_panel_data(model, mapped["sample"], mapped["image"], mapped["region_map"],
                              input_format=input_format, options=options, notes=notes)
    return draw_point_panel(data, title, tile=tile)


class PointPanelHook(HookBase):
    """Every `period` iterations (and after the last one), on the main process only: the point panel
    of one fixed training sample, to TensorBoard (`put_image("plrc/point_panel", ...)`, CHW float in
    [0, 1]) and as `point_panel_<iteration>.png` in `output_dir`, beside the checkpoints.

    The sample is the first readable of the first few dicts of the first train dataset, mapped once
    with a Generator seeded by `seed`, so every panel of a run shows the same views and points. If none
    of them is readable the hook warns and turns itself off: a picture never stops a run.
    """

    def __init__(self, *, period: int, output_dir: str, dataset_name: str, mapper, input_format: str,
                 options: PanelOptions, seed: int = 0):
        self.period, self.output_dir, self.dataset_name = int(period), output_dir, dataset_name
        self.mapper, self.input_format, self.options, self.seed = mapper, input_format, options, int(seed)
        self._mapped = None

    @classmethod
    def from_config(cls, cfg, trainer=None) -> "PointPanelHook":
        """The hook for a PLRC config (build_plrc_hooks calls this; `trainer` is set on registration)."""
        from plrc_d2.data.mapper import PLRCDatasetMapper

        m = cfg.MODEL.PLRC
        options = PanelOptions(num_query_points=int(cfg.PLRC_VIS.NUM_QUERY_POINTS), map_size=int(m.MAP_SIZE),
                               match_radius=float(m.MATCH_RADIUS))
        return cls(period=cfg.PLRC_VIS.PERIOD, output_dir=cfg.OUTPUT_DIR, dataset_name=cfg.DATASETS.TRAIN[0],
                   mapper=PLRCDatasetMapper(cfg), input_format=cfg.INPUT.FORMAT, options=options,
                   seed=max(int(cfg.SEED), 0))

    def _fixed_sample(self, tries: int = 8) -> Optional[dict]:
        """The mapped fixed sample (mapped on first use), or None when no early image is readable."""
        if self._mapped is None:
            for index, dataset_dict in enumerate(DatasetCatalog.get(self.dataset_name)[:tries]):
                self._mapped = map_sample(self.mapper, dataset_dict, self.seed + index)
                if self._mapped is not None:
                    break
        return self._mapped

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.period <= 0 or not comm.is_main_process():
            return
        if next_iter % self.period and next_iter != self.trainer.max_iter:
            return
        mapped = self._fixed_sample()
        if mapped is None:
            logger.warning(f"PointPanelHook: none of the first images of {self.dataset_name} could be read; "
                           "no point panels in this run")
            self.period = 0
            return
        title = f"PLRC points and affinities: {self.dataset_name}, after {next_iter} iterations"
        panel = render_panel(_unwrap(self.trainer.model), mapped, input_format=self.input_format,
                             options=self.options, title=title)
        get_event_storage().put_image("plrc/point_panel", torch.from_numpy(panel).permute(2, 0, 1).float() / 255)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"point_panel_{next_iter - 1:07d}.png")  # as model_<iter>.pth
        Image.fromarray(panel).save(path)
        logger.info(f"Wrote point panel {path}")
