"""View geometry: matching cells of the M x M distillation grid, bilinear taps, reading points.

Shorthand: N images, M distillation map size (M x M cells per view), h x w backbone feature map.
Coordinate frames:
  * `*_wrt_view`: (x, y) in [0, 1]^2 of a view; cell (row i, col j) of the M x M grid has its centre
    at ((j + 0.5) / M, (i + 0.5) / M) and flat index i * M + j.
  * `crop_box_wrt_image`: x0, y0, x1, y1 of a view in [0, 1]^2 of the original image, with x0 > x1 when
    the view is flipped, so view x = u maps to image x = x0 + u * (x1 - x0) in both cases.

Everything here is pure and works on any device. The model calls `match_cells` on the CPU crop boxes
that the data loader delivers, so matching costs no host-device synchronisation.
"""
from typing import Optional, Tuple

import torch
from torch.nn import functional as F

__all__ = ["match_cells", "tile_order", "cell_centres_wrt_image", "bilinear_taps", "cell_taps", "sample_points",
           "point_labels"]


def cell_centres_wrt_image(crop_box: torch.Tensor, map_size: int) -> torch.Tensor:
    """crop_box (N, 4) -> centres (N, M*M, 2) of the view's M x M cells, (x, y) in [0, 1]^2 of the image."""
    c = (torch.arange(map_size, dtype=torch.float64, device=crop_box.device) + 0.5) / map_size
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    u, v = gx.reshape(1, -1), gy.reshape(1, -1)
    box = crop_box.to(torch.float64)
    x = box[:, 0:1] + u * (box[:, 2:3] - box[:, 0:1])
    y = box[:, 1:2] + v * (box[:, 3:4] - box[:, 1:2])
    return torch.stack([x, y], dim=-1)


def _cell_diagonal(crop_box: torch.Tensor, map_size: int, scale: torch.Tensor) -> torch.Tensor:
    """(N, 4) -> (N,) diagonal of one cell in (scaled) image units."""
    wh = (crop_box[:, 2:4] - crop_box[:, 0:2]).abs().to(torch.float64) * scale / map_size
    return wh.norm(dim=1)


def match_cells(
    crop_box_a: torch.Tensor,
    crop_box_b: torch.Tensor,
    map_size: int,
    radius: float,
    image_size: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs of M x M cells of two views whose centres, mapped to the original image, lie closer than
    `radius` x the larger of the two cell diagonals (flip-aware through the crop boxes).

    Args:
        crop_box_a, crop_box_b: (4,) for one image or (N, 4) for a batch, `crop_box_wrt_image`.
        map_size: M.
        radius: match radius in units of the larger cell diagonal (reference 0.5).
        image_size: optional (N, 2) or (2,) image (height, width) in pixels; distances are then measured
            in pixels, otherwise in the normalised [0, 1]^2 frame of the image.
    Returns:
        idx_a, idx_b: (n,) int64 flat cell indices, sorted by (image, idx_a, idx_b). For (4,) inputs they
        lie in [0, M*M); for (N, 4) inputs they index the batch-flattened grid [0, N*M*M), i.e. image
        b's cell c is b * M*M + c.
    """
    single = crop_box_a.dim() == 1
    box_a, box_b = crop_box_a.reshape(-1, 4), crop_box_b.reshape(-1, 4)
    if box_a.shape != box_b.shape:
        raise ValueError(f"crop boxes differ in shape: {tuple(box_a.shape)} vs {tuple(box_b.shape)}")
    n_img, m2, dev = box_a.shape[0], map_size * map_size, box_a.device
    if n_img == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty.clone()
    if image_size is None:
        scale = torch.ones(n_img, 2, dtype=torch.float64, device=dev)
    else:  # (height, width) -> (x scale, y scale)
        scale = image_size.reshape(-1, 2).to(dev, torch.float64).flip(-1).expand(n_img, 2)
    thresh = radius * torch.maximum(_cell_diagonal(box_a, map_size, scale), _cell_diagonal(box_b, map_size, scale))
    t2 = thresh * thresh
    # Separable search: per axis, the squared distances between the M cell-centre coordinates of A and of B
    # (N, M, M); a pair of cells matches when its row term + column term < threshold^2, so only row pairs and
    # column pairs that are each within the threshold need combining. B's coordinates are monotonic along
    # an axis, so those of one A coordinate form a band of at most K consecutive B indices: the candidates
    # are (N, M, M, K_rows, K_cols), a few M^2 per image, searched in one batched pass (no per-image loop).
    c = (torch.arange(map_size, dtype=torch.float64, device=dev) + 0.5) / map_size
    ba, bb = box_a.to(torch.float64), box_b.to(torch.float64)
    coord = lambda box, lo, hi: box[:, lo, None] + c[None, :] * (box[:, hi, None] - box[:, lo, None])  # noqa: E731
    dx2 = ((coord(ba, 0, 2)[:, :, None] - coord(bb, 0, 2)[:, None, :]) * scale[:, 0, None, None]) ** 2
    dy2 = ((coord(ba, 1, 3)[:, :, None] - coord(bb, 1, 3)[:, None, :]) * scale[:, 1, None, None]) ** 2
    rows_b, band_y = _axis_band(dy2, t2)  # (N, M, K_r): row of B, squared distance (inf off the band)
    cols_b, band_x = _axis_band(dx2, t2)  # (N, M, K_c)
    d2 = band_y[:, :, None, :, None] + band_x[:, None, :, None, :]  # (N, row A, col A, K_r, K_c)
    # nonzero walks (image, row A, col A, row B, col B) in order: pairs come out sorted by (image, idx_a, idx_b)
    img, ra, ca, kr, kc = (d2 < t2[:, None, None, None, None]).nonzero(as_tuple=True)
    offset = 0 if single else img * m2
    return ra * map_size + ca + offset, rows_b[img, ra, kr] * map_size + cols_b[img, ca, kc] + offset


def tile_order(cells: torch.Tensor, map_size: int, tile: int) -> torch.Tensor:
    """Stable permutation of batch-flattened M x M cells (n,) that orders them by image, then by tile x tile
    block of the grid (blocks row-major), then row-major inside the block.

    Equal cells stay in their relative order, so pairs grouped by cell stay grouped. A run of consecutive
    cells in this order covers a compact patch rather than a strip of whole rows, so it matches fewer
    distinct cells of another view (at R-50 sizes, 256-pair runs: 39.7k distinct V_d cells instead of 42.4k).
    """
    m2, blocks = map_size * map_size, -(-map_size // tile)
    img, cell = cells // m2, cells % m2
    y, x = cell // map_size, cell % map_size
    key = ((img * blocks + y // tile) * blocks + x // tile) * (tile * tile) + (y % tile) * tile + x % tile
    return torch.argsort(key, stable=True)


def _axis_band(d2: torch.Tensor, t2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-axis squared distances (N, M_a, M_b) and thresholds^2 (N,) -> for every A coordinate the band of
    B indices within the threshold: indices (N, M_a, K) and their squared distances, inf past the band's
    end (K = the widest band in the batch)."""
    within = d2 < t2[:, None, None]
    count = within.sum(dim=2)
    k = int(count.max()) if count.numel() else 0
    first = within.to(torch.uint8).argmax(dim=2)  # first index of the band (the band is contiguous)
    steps = torch.arange(k, device=d2.device)
    idx = (first[:, :, None] + steps).clamp_(max=d2.shape[2] - 1)
    band = d2.gather(2, idx).masked_fill_(steps >= count[:, :, None], float("inf"))
    return idx, band


def bilinear_taps(in_size: int, out_size: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 1-D weights of `F.interpolate(mode="linear", align_corners=False)` from in_size to out_size.

    Returns idx (out_size, 2) int64 source indices and weight (out_size, 2) float32; output o equals
    sum_t weight[o, t] * source[idx[o, t]]. Read off the interpolation of an identity matrix, so the
    taps agree with PyTorch's upsampling by construction (unused taps carry weight 0).
    """
    eye = torch.eye(in_size, dtype=torch.float64, device=device).unsqueeze(1)  # (in, 1, in)
    mat = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[:, 0, :].t()  # (out, in)
    weight, idx = mat.topk(min(2, in_size), dim=1)
    if in_size == 1:
        weight, idx = torch.cat([weight, weight * 0], 1), torch.cat([idx, idx], 1)
    return idx, weight.float()


def cell_taps(cells: torch.Tensor, map_size: int, feat_hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps of batch-flattened M x M cells on the batch-flattened h x w feature cells.

    Args:
        cells: (n,) int64 in [0, N*M*M), image b's cell (i, j) is b*M*M + i*M + j.
        map_size: M.  feat_hw: (h, w).
    Returns:
        rows (n, 4) int64 in [0, N*h*w) and weights (n, 4) float32 such that the bilinear upsampling
        (align_corners=False) of any (N, C, h, w) map X to M x M, read at cell p, equals
        sum_t weights[p, t] * X_flat[rows[p, t]] with X_flat = X.permute(0, 2, 3, 1).reshape(-1, C).
    """
    h, w = feat_hw
    m2 = map_size * map_size
    iy, wy = bilinear_taps(h, map_size, cells.device)
    ix, wx = bilinear_taps(w, map_size, cells.device)
    img, cell = cells // m2, cells % m2
    r, c = cell // map_size, cell % map_size
    rows = img[:, None, None] * (h * w) + iy[r][:, :, None] * w + ix[c][:, None, :]  # (n, 2, 2)
    weights = wy[r][:, :, None] * wx[c][:, None, :]
    return rows.reshape(-1, 4), weights.reshape(-1, 4)


def sample_points(feature_map: torch.Tensor, points_wrt_view: torch.Tensor) -> torch.Tensor:
    """Bilinear read of a map at points.

    feature_map (N, D, h, w); points_wrt_view (N, R, P, 2), (x, y) in [0, 1]^2 of the view (pixel centres
    at (i + 0.5) / S) -> (N*R*P, D), rows ordered (image, region, point). grid_sample with
    align_corners=False at 2p - 1, so a point and a pixel centre of the view coincide.
    """
    n, r, p, _ = points_wrt_view.shape
    grid = (points_wrt_view.to(feature_map.dtype) * 2 - 1).reshape(n, r * p, 1, 2)
    out = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2).reshape(n * r * p, -1)


def point_labels(region_valid: torch.Tensor, points_per_region: int) -> torch.Tensor:
    """region_valid (N, R) bool -> (N*R*P,) int64 label b*R + r per point (order of `sample_points`),
    -1 for points of invalid rows (ignored by the point loss)."""
    n, r = region_valid.shape
    ids = torch.arange(n * r, device=region_valid.device).view(n, r)
    ids = torch.where(region_valid, ids, torch.full_like(ids, -1))
    return ids[:, :, None].expand(n, r, points_per_region).reshape(-1)
