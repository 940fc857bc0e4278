"""PLRCDatasetMapper: the mapper -> model contract, points in their regions, view constraints, determinism."""
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from plrc_d2.config import add_plrc_config
from plrc_d2.data import PLRCDatasetMapper
from plrc_d2.data.points import box_overlap, view_to_image
from plrc_d2.data.regions import annotation_region_map, grid_region_map

H, W = 40, 60  # H != W so that an x/y swap shows


def _cfg(**overrides):
    cfg = add_plrc_config(get_cfg())
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.PLRC.CROP_SIZE = 32
    cfg.INPUT.PLRC.REGION_MAP_SIZE = 16
    cfg.INPUT.PLRC.POINTS_PER_REGION = 6
    for key, value in overrides.items():
        cfg.merge_from_list([f"INPUT.PLRC.{key}", value])
    return cfg


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8))
    return path


# an L-shaped object and a small square; background is region 0
ANNOTATIONS = [
    {"segmentation": [[0, 0, 20, 0, 20, 30, 50, 30, 50, 40, 0, 40]], "bbox": [0, 0, 50, 40], "bbox_mode": 1,
     "category_id": 0},
    {"segmentation": [[35, 3, 55, 3, 55, 15, 35, 15]], "bbox": [35, 3, 20, 12], "bbox_mode": 1, "category_id": 1},
]


def _check_points_in_regions(out, region_map_full):
    """Every valid point, mapped through its view's crop box, lands on an original pixel of its region."""
    for row in np.flatnonzero(out["region_valid"].numpy()):
        region = int(out["region_ids"][row])
        for view in out["views"][:2]:
            p = view_to_image(view["points"][row].numpy(), view["crop_box"].numpy())
            cols = np.clip((p[:, 0] * W).astype(int), 0, W - 1)
            rows = np.clip((p[:, 1] * H).astype(int), 0, H - 1)
            assert (region_map_full[rows, cols] == region).all()


def test_contract_shapes_and_dtypes(image_file):
    cfg = _cfg(NUM_SHARED_REGIONS=3)
    out = PLRCDatasetMapper(cfg)({"file_name": image_file, "image_id": 7}, rng=np.random.default_rng(0))
    assert out["image_id"] == 7 and len(out["views"]) == 3
    for view in out["views"]:
        assert view["image"].shape == (3, 32, 32) and view["image"].dtype == torch.uint8
        assert view["points"].shape == (3, 6, 2) and view["points"].dtype == torch.float32
        assert view["crop_box"].shape == (4,) and view["crop_box"].dtype == torch.float32
        assert ((view["points"] > 0) & (view["points"] < 1)).all()
    assert out["region_valid"].shape == (3,) and out["region_valid"].dtype == torch.bool
    assert out["region_valid"][0]


@pytest.mark.parametrize("seed", range(6))
def test_points_inside_their_region_annotations(image_file, seed):
    mapper = PLRCDatasetMapper(_cfg(REGION_SOURCE="annotations", NUM_SHARED_REGIONS=3))
    d = {"file_name": image_file, "image_id": 0, "height": H, "width": W, "annotations": ANNOTATIONS}
    out = mapper(d, rng=np.random.default_rng(seed))
    assert "annotations" not in out
    _check_points_in_regions(out, annotation_region_map(ANNOTATIONS, H, W))


@pytest.mark.parametrize("seed", range(6))
def test_points_inside_their_region_grid(image_file, seed):
    mapper = PLRCDatasetMapper(_cfg(GRID_SIZE=(2, 5), NUM_SHARED_REGIONS=10))  # 2 rows x 5 cols: asymmetric
    out = mapper({"file_name": image_file}, rng=np.random.default_rng(seed))
    _check_points_in_regions(out, grid_region_map(H, W, 2, 5))


def test_distill_overlap_always_above_threshold(image_file):
    mapper = PLRCDatasetMapper(_cfg(DISTILL_MIN_OVERLAP=0.7, CROP_SCALE=(0.05, 1.0), MAX_CROP_TRIES=3))
    for seed in range(40):
        out = mapper({"file_name": image_file}, rng=np.random.default_rng(seed))
        boxes = []
        for view in (out["views"][0], out["views"][2]):
            x0, y0, x1, y1 = view["crop_box"].numpy() * [W, H, W, H]
            boxes.append([min(x0, x1), y0, max(x0, x1), y1])
        assert box_overlap(*boxes) >= 0.7 - 1e-6
    assert mapper.stats["crop_retries"] > 0  # the constraint was active (and counted)


def _box_px(view):
    x0, y0, x1, y1 = view["crop_box"].numpy() * [W, H, W, H]
    return [min(x0, x1), y0, max(x0, x1), y1]


def test_reuse_key_as_distill(image_file):
    mapper = PLRCDatasetMapper(_cfg(REUSE_KEY_AS_DISTILL=True, DISTILL_MIN_OVERLAP=0.6))
    for seed in range(10):
        out = mapper({"file_name": image_file}, rng=np.random.default_rng(seed))
        assert out["views"][2] is out["views"][1]
        assert box_overlap(_box_px(out["views"][0]), _box_px(out["views"][1])) >= 0.6 - 1e-6
        assert out["region_valid"][0]


@pytest.mark.parametrize("seed", range(4))
def test_region_valid_counts_regions_seen_in_both_views(image_file, seed):
    mapper = PLRCDatasetMapper(_cfg(NUM_SHARED_REGIONS=16, CROP_SCALE=(0.1, 0.3)))  # small crops: few shared
    out = mapper({"file_name": image_file}, rng=np.random.default_rng(seed))
    grid = grid_region_map(H, W, 4, 4)
    seen = []
    for view in out["views"][:2]:  # region ids under the 16 x 16 cell centres of each view
        c = (np.arange(16) + 0.5) / 16
        xs, ys = np.meshgrid(c, c)
        p = view_to_image(np.stack([xs, ys], -1), view["crop_box"].numpy())
        seen.append(set(grid[(p[..., 1] * H).astype(int), (p[..., 0] * W).astype(int)].ravel()))
    valid = out["region_valid"].numpy()
    assert valid.sum() == len(seen[0] & seen[1]) < 16
    assert set(out["region_ids"].numpy()[valid]) == seen[0] & seen[1]
    assert valid[: valid.sum()].all()  # valid rows first
    for view in out["views"]:
        assert (view["points"][~out["region_valid"]] == 0.5).all()


def test_same_seed_same_sample(image_file):
    mapper = PLRCDatasetMapper(_cfg(NUM_SHARED_REGIONS=2))
    a, b, c = (mapper({"file_name": image_file}, rng=np.random.default_rng(s)) for s in (3, 3, 4))
    for va, vb, vc in zip(a["views"], b["views"], c["views"]):
        for key in ("image", "points", "crop_box"):
            assert torch.equal(va[key], vb[key])
    assert not torch.equal(a["views"][0]["crop_box"], c["views"][0]["crop_box"])


def test_bgr_format_and_flip_consistency(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = [0, 0, 255]  # BGR on disk: left half red
    path = str(tmp_path / "half.png")
    cv2.imwrite(path, image)
    cfg = _cfg(COLOR_JITTER_PROB=0.0, GRAYSCALE_PROB=0.0, BLUR_PROB=0.0, CROP_SCALE=(0.9, 1.0))
    flips = 0
    for fmt, red_channel in (("RGB", 0), ("BGR", 2)):
        cfg.INPUT.FORMAT = fmt
        for seed in range(3):
            out = PLRCDatasetMapper(cfg)({"file_name": path}, rng=np.random.default_rng(seed))
            for view in out["views"]:
                img, (x0, _, x1, _) = view["image"].numpy(), view["crop_box"].numpy()
                left_is_red = img[red_channel, 16, 1] > 128
                assert left_is_red == (x0 < x1)  # a flipped view (x0 > x1) shows red on its right
                flips += int(x0 > x1)
    assert 0 < flips < 18


def test_felzenszwalb_source_and_cache(tmp_path, image_file):
    cache = tmp_path / "regions"
    cfg = _cfg(REGION_SOURCE="felzenszwalb", REGION_CACHE_DIR=str(cache), FELZENSZWALB_MIN_SIZE=50,
               FELZENSZWALB_SCALE=100.0, FELZENSZWALB_MAX_SIDE=32)
    mapper = PLRCDatasetMapper(cfg)
    a = mapper({"file_name": image_file}, rng=np.random.default_rng(0))
    files = [os.path.join(r, f) for r, _, fs in os.walk(cache) for f in fs]
    assert len(files) == 1 and files[0].endswith(".npy")
    region_map = np.load(files[0])
    assert region_map.shape == (21, 32)  # longer side 32
    b = mapper({"file_name": image_file}, rng=np.random.default_rng(0))  # from the cache
    assert torch.equal(a["views"][0]["points"], b["views"][0]["points"])
    assert a["region_valid"][0]


def test_annotations_source_needs_annotations(image_file):
    mapper = PLRCDatasetMapper(_cfg(REGION_SOURCE="annotations"))
    with pytest.raises(ValueError, match="labeled dataset"):
        mapper({"file_name": image_file}, rng=np.random.default_rng(0))
