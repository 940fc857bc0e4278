"""Region maps and point sampling, checked on hand-computable cases."""
import numpy as np
import pytest

from plrc_d2.data.points import (
    DUMMY_POINT, box_overlap, points_in_regions, shared_region_points, view_cell_centres, view_region_map,
    view_to_image,
)
from plrc_d2.data.regions import annotation_region_map, grid_region_map, read_region_map


def test_grid_map_by_hand():
    # 4 rows x 6 cols image, 2 x 3 grid: cells are 2 x 2 pixels
    expected = np.array([[0, 0, 1, 1, 2, 2],
                         [0, 0, 1, 1, 2, 2],
                         [3, 3, 4, 4, 5, 5],
                         [3, 3, 4, 4, 5, 5]])
    np.testing.assert_array_equal(grid_region_map(4, 6, 2, 3), expected)
    # 3 x 5 pixels, 2 x 2 grid: the pixel centre decides (row 1 centre 1.5/3 = 0.5 -> lower cell)
    expected = np.array([[0, 0, 1, 1, 1],
                         [2, 2, 3, 3, 3],
                         [2, 2, 3, 3, 3]])
    np.testing.assert_array_equal(grid_region_map(3, 5, 2, 2), expected)
    np.testing.assert_array_equal(grid_region_map(2, 3, 2, 3), np.arange(6).reshape(2, 3))


def test_read_region_map_uses_x_then_y():
    region_map = np.arange(6).reshape(2, 3)  # 2 rows, 3 cols
    pts = np.array([[0.1, 0.9], [0.9, 0.1], [0.5, 0.4], [1.0, 1.0]])
    np.testing.assert_array_equal(read_region_map(region_map, pts), [3, 2, 1, 5])


def test_box_overlap_by_hand():
    assert box_overlap([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(0.5)
    assert box_overlap([0, 0, 10, 10], [0, 0, 20, 10]) == pytest.approx(0.5)  # max area in the denominator
    assert box_overlap([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert box_overlap([2, 2, 4, 4], [0, 0, 10, 10]) == pytest.approx(4 / 100)


def test_view_region_map_and_flip_by_hand():
    region_map = np.arange(6).reshape(2, 3)
    # view = right two thirds of the image, full height; 2 x 2 cells
    np.testing.assert_array_equal(view_region_map(region_map, [1 / 3, 0, 1, 1], 2), [[1, 2], [4, 5]])
    # the same crop flipped: x0 > x1
    np.testing.assert_array_equal(view_region_map(region_map, [1, 0, 1 / 3, 1], 2), [[2, 1], [5, 4]])
    # separable fast path == reading every cell centre
    rng = np.random.default_rng(0)
    big = rng.integers(0, 9, size=(13, 17))
    for box in ([0.1, 0.2, 0.7, 0.9], [0.8, 0.05, 0.3, 0.6]):
        slow = read_region_map(big, view_to_image(view_cell_centres(7), np.array(box)))
        np.testing.assert_array_equal(view_region_map(big, np.array(box), 7), slow)


@pytest.mark.parametrize("extra_rows", [0, 6])  # 4 rows: the per-row loop; 10 rows: the sorted, all-rows path
def test_points_lie_in_their_region_asymmetric_map(extra_rows):
    # an L-shaped region 1 in an 8 x 8 map: an x/y swap would put points outside it
    view_map = np.zeros((8, 8), dtype=np.int32)
    view_map[:, :2] = 1
    view_map[6:, :] = 1
    view_map[:3, 5:] = 2
    rng = np.random.default_rng(0)
    ids = [1, 2, -1, 7] + [2, 1, 0, -1, 9, 1][:extra_rows]
    pts = points_in_regions(view_map, np.array(ids), 20, rng)
    assert pts.shape == (len(ids), 20, 2) and pts.dtype == np.float32
    for row, region in enumerate(ids):
        if region in (-1, 7, 9):
            assert (pts[row] == DUMMY_POINT).all()  # invalid row or a region not in this view
            continue
        cols, rows = (pts[row, :, 0] * 8).astype(int), (pts[row, :, 1] * 8).astype(int)
        assert (view_map[rows, cols] == region).all()
        assert np.allclose((pts[row] * 8) % 1, 0.5)  # cell centres


def test_points_without_replacement_when_enough_cells():
    view_map = np.zeros((4, 4), dtype=np.int32)
    view_map[0, :3] = 5  # 3 cells
    pts = points_in_regions(view_map, np.array([0, 5]), 3, np.random.default_rng(1))
    assert len({tuple(p) for p in pts[0]}) == 3  # 13 cells, 3 distinct draws
    assert len({tuple(p) for p in pts[1]}) == 3  # exactly the 3 cells of region 5


def test_region_valid_when_views_share_no_region():
    rng = np.random.default_rng(0)
    q = np.zeros((4, 4), dtype=np.int32)
    k = np.ones((4, 4), dtype=np.int32)
    out = shared_region_points(q, k, 2, 5, rng)
    assert not out["region_valid"].any()
    assert (out["region_ids"] == -1).all()
    assert np.isfinite(out["points_q"]).all() and (out["points_q"] == DUMMY_POINT).all()


def test_region_valid_rows_beyond_shared_regions():
    q = np.array([[0, 1], [2, 3]], dtype=np.int32)
    k = np.array([[3, 3], [1, 9]], dtype=np.int32)  # shares 1 and 3
    out = shared_region_points(q, k, 4, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(out["region_valid"], [True, True, False, False])
    assert set(out["region_ids"][:2]) == {1, 3}
    for row in range(2):
        region = out["region_ids"][row]
        for pts, m in ((out["points_q"], q), (out["points_k"], k)):
            idx = (pts[row] * 2).astype(int)
            assert (m[idx[:, 1], idx[:, 0]] == region).all()


def test_annotation_region_map_background_and_order():
    anns = [
        {"segmentation": [[0, 0, 8, 0, 8, 4, 0, 4]], "bbox": [0, 0, 8, 4], "bbox_mode": 1},  # large, top
        {"segmentation": [[2, 1, 4, 1, 4, 3, 2, 3]], "bbox": [2, 1, 2, 2], "bbox_mode": 1},  # small, inside it
    ]
    m = annotation_region_map(anns, 6, 10)
    assert m.shape == (6, 10)
    assert m[5, 9] == 0 and m[0, 7] == 1 and m[2, 3] == 2  # background, big, small on top


@pytest.mark.parametrize("rows", [1, 6])  # the per-row loop and the all-rows path
def test_points_uniform_without_replacement(rows):
    # 40-cell region, 32 points: every cell is drawn with probability 32/40, never twice, never outside
    view_map = np.zeros((8, 8), dtype=np.int32)
    view_map.flat[:40] = 1
    rng = np.random.default_rng(1)
    hits = np.zeros(64)
    for _ in range(2000 // rows):
        for pts in points_in_regions(view_map, np.full(rows, 1), 32, rng):
            idx = (pts[:, 1] * 8).astype(int) * 8 + (pts[:, 0] * 8).astype(int)
            assert len(set(idx.tolist())) == 32
            hits[idx] += 1
    assert hits[40:].sum() == 0
    assert np.abs(hits[:40] / (2000 // rows * rows) - 0.8).max() < 0.04  # binomial std of a frequency: 0.009
