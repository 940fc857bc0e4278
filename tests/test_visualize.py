"""Drawing functions and tools/plot_metrics.py on synthetic inputs (no model, no dataset)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from plrc_d2.data.points import view_to_image
from plrc_d2.visualization import (
    AffinityData, PanelData, crop_region_map, draw_point_panel, image_to_view, overlay_heatmap,
    overlay_regions, panel_size,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_plot_metrics():
    spec = importlib.util.spec_from_file_location("plot_metrics", os.path.join(REPO_ROOT, "tools", "plot_metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_view_image_round_trip_with_flip():
    flipped_box = np.array([0.8, 0.1, 0.2, 0.5])  # x0 > x1: the view is mirrored
    p = np.array([[0.0, 0.0], [0.25, 0.5], [1.0, 1.0]])
    wrt_image = view_to_image(p, flipped_box)
    np.testing.assert_allclose(wrt_image, [[0.8, 0.1], [0.65, 0.3], [0.2, 0.5]], atol=1e-6)
    np.testing.assert_allclose(image_to_view(wrt_image, flipped_box), p, atol=1e-6)


def test_crop_region_map_reads_the_box_and_mirrors():
    region_map = np.array([[0, 1], [2, 3]])  # 2x2 grid over the image, asymmetric in x and y
    left_column = crop_region_map(region_map, [0.0, 0.0, 0.5, 1.0], 4)
    np.testing.assert_array_equal(left_column, [[0] * 4, [0] * 4, [2] * 4, [2] * 4])
    mirrored = crop_region_map(region_map, [1.0, 0.0, 0.0, 0.5], 2)  # top half, flipped
    np.testing.assert_array_equal(mirrored, [[1, 0], [1, 0]])
    np.testing.assert_array_equal(crop_region_map(region_map, [0, 0, 1, 1], (2, 6)),
                                  [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3]])


def test_overlays_keep_shape_and_mark_borders():
    image = np.zeros((6, 8, 3), np.uint8)
    region_map = np.zeros((6, 8), np.int64)
    region_map[:, 4:] = 1
    out = overlay_regions(image, region_map)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert (out[:, 3] == 255).all() and (out[:, 4] == 255).all()  # border pixels on both sides
    assert not (out[:, 0] == out[:, 7]).all()  # the two regions are tinted differently
    heat = np.linspace(0, 1, 48).reshape(6, 8)
    hot = overlay_heatmap(image, heat)
    assert hot[-1, -1, 0] > hot[-1, -1, 2] and hot[0, 0, 2] > hot[0, 0, 0]  # jet: high red, low blue
    with pytest.raises(ValueError, match="differ in size"):
        overlay_regions(image, region_map[:, :4])


def _synthetic_panel(num_queries, size=32):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    views = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    maps = {name: rng.random((num_queries, size, size)) for name in ("V_q", "V_k", "V_d")}
    maps["image"] = rng.random((num_queries, 48, 64))
    affinity = AffinityData(rng.random((num_queries, 2)), maps) if num_queries else None
    return PanelData(
        views=views, crop_boxes_wrt_image=np.array([[0.1, 0.1, 0.7, 0.8], [0.9, 0.0, 0.3, 0.6],
                                                    [0.0, 0.2, 0.6, 1.0]]),
        points_wrt_view=rng.random((2, 2, 3, 2)), region_valid=np.array([True, False]), region_ids=np.array([5, -1]), image=image,
        region_map=np.arange(16).reshape(4, 4), matched_cells=(np.array([0, 5]), np.array([1, 6])),
        map_size=4, affinity=affinity, notes=["synthetic"])


@pytest.mark.parametrize("num_queries", [0, 2])
def test_draw_point_panel_size(num_queries):
    panel = draw_point_panel(_synthetic_panel(num_queries), "synthetic", tile=96)
    assert panel.shape == panel_size(num_queries, 96) + (3,)
    assert panel.dtype == np.uint8 and panel.std() > 10  # something was drawn


def test_draw_point_panel_rejects_mismatched_affinity():
    data = _synthetic_panel(1)
    data.affinity.maps["V_k"] = np.zeros((1, 5, 5))
    with pytest.raises(ValueError, match="over V_k"):
        draw_point_panel(data, "bad", tile=64)


def test_parse_metrics_quirks():
    pm = _load_plot_metrics()
    text = "\n".join([
        '{"iteration": 0, "loss_plrc_image": 3.0, "lr": 0.03, "plrc_point_acc": 0.5, "plrc_matched_pairs": 9}',
        '{"iteration": 1, "loss_plrc_image": NaN}{"iteration": 2, "loss_plrc_image": 2.0}',  # glued
        "not json at all",
        '{"iteration": 1, "plrc/teacher_temperature": 0.04}',  # same iteration, split over lines
        '{\n  "iteration": 3,\n  "loss_plrc_image": 1.5\n}',  # pretty-printed
        '{"iteration": 2, "loss_plrc_image": 2.5}',  # a resumed run rewrites iteration 2
        '[1, 2]',
        '{"iteration": 4, "loss_plrc_ima',  # killed mid-write
    ])
    records, skipped = pm.parse_metrics_text(text)
    assert sorted(records) == [0, 1, 2, 3]
    assert skipped == 3
    assert records[2]["loss_plrc_image"] == 2.5
    assert records[1]["plrc/teacher_temperature"] == 0.04 and np.isnan(records[1]["loss_plrc_image"])
    groups = pm.group_series(pm.series_by_key(records))
    its, values = groups["losses"]["loss_plrc_image"]
    np.testing.assert_array_equal(its, [0, 1, 2, 3])
    assert list(groups["teacher temperature"]) == ["plrc/teacher_temperature"]
    assert list(groups["learning rate"]) == ["lr"] and groups["momentum"] == {}
    assert list(groups["accuracies"]) == ["plrc_point_acc"]
    assert list(groups["PLRC and data counters"]) == ["plrc_matched_pairs"]


def test_plot_metrics_cli(tmp_path):
    with open(tmp_path / "metrics.json", "w") as f:
        for it in range(0, 40, 10):
            f.write(json.dumps({"iteration": it, "loss_plrc_image": 5.0 - it / 10, "loss_plrc_point": 1.0,
                                "total_loss": 6.0, "lr": 0.01, "plrc/momentum": 0.999,
                                "plrc/teacher_temperature": 0.04 + it / 1000, "time": 0.1}) + "\n")
        f.write('{"iteration": 40, "loss')
    out = tmp_path / "plots" / "curves.png"
    tool = os.path.join(REPO_ROOT, "tools", "plot_metrics.py")
    done = subprocess.run([sys.executable, tool, str(tmp_path), "--output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "4 iterations, 1 unreadable" in done.stdout
    assert Image.open(out).size == (1100, 1050)
    missing = subprocess.run([sys.executable, tool, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no metrics.json" in missing.stderr


def test_self_affinity_peaks_at_the_query_point():
    import torch

    from plrc_d2.engine.vis_hook import default_query_points, point_affinity_maps

    gen = torch.Generator().manual_seed(0)
    feature_map = torch.randn(8, 3, 3, generator=gen)  # (D, h, w): a coarse map, as res5 gives
    size = 24
    query = default_query_points(np.array([[[0.9, 0.1]]]), np.array([True]), 3, size)
    np.testing.assert_allclose(query, [[(21 + 0.5) / 24, (2 + 0.5) / 24], [6.5 / 24, 6.5 / 24], [18.5 / 24] * 2])
    maps = point_affinity_maps(feature_map, torch.as_tensor(query), feature_map, (size, size)).numpy()
    assert maps.shape == (3, size, size) and maps.dtype == np.float64
    for q, (x, y) in enumerate(query):
        col, row = int(x * size), int(y * size)
        assert maps[q, row, col] == pytest.approx(1.0, abs=1e-12) and maps[q, row, col] >= maps[q].max() - 1e-12
    # Inside the map (no clamped border pixels that repeat the same vector) the argmax is unique.
    for q in (1, 2):
        assert np.unravel_index(np.argmax(maps[q]), maps[q].shape) == tuple(np.floor(query[q, ::-1] * size))
    # Over another map the values stay cosines.
    other = point_affinity_maps(feature_map, torch.as_tensor(query), torch.randn(8, 2, 5, generator=gen), (4, 10))
    assert other.shape == (3, 4, 10) and other.abs().max() <= 1 + 1e-12
