"""The resumable train stream: a pure function of (seed, sample position)."""
import itertools

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from plrc_d2.config import add_plrc_config
from plrc_d2.data import PLRCDatasetMapper, build_plrc_train_loader
from plrc_d2.data.loader import PLRCTrainLoader, PLRCTrainStream


def _cfg(folder=None):
    cfg = add_plrc_config(get_cfg())
    cfg.INPUT.PLRC.CROP_SIZE = 32
    cfg.INPUT.PLRC.REGION_MAP_SIZE = 8
    cfg.INPUT.PLRC.POINTS_PER_REGION = 4
    cfg.SEED = 5
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    if folder:
        cfg.DATASETS.TRAIN = (f"folder:{folder}",)
    return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 30, 3)).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _dicts(folder):
    return [{"file_name": str(p), "image_id": i} for i, p in enumerate(sorted(folder.glob("*.png")))]


def _stream(folder, seed=5, batch_size=2, rank=0, world_size=1):
    return PLRCTrainStream(_dicts(folder), PLRCDatasetMapper(_cfg()), seed=seed, batch_size=batch_size,
                           rank=rank, world_size=world_size)


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same_batch(a, b):
    assert [d["file_name"] for d in a] == [d["file_name"] for d in b]
    for da, db in zip(a, b):
        assert torch.equal(da["region_valid"], db["region_valid"])
        for va, vb in zip(da["views"], db["views"]):
            for key in ("image", "points", "crop_box"):
                assert torch.equal(va[key], vb[key])


def test_resumed_stream_equals_uninterrupted(folder):
    fresh = _take(PLRCTrainLoader(_stream(folder)), 6)
    resumed_loader = PLRCTrainLoader(_stream(folder))
    resumed_loader.set_start_iter(3)
    resumed = _take(resumed_loader, 3)
    for a, b in zip(fresh[3:], resumed):
        _same_batch(a, b)
    assert [d["file_name"] for d in fresh[0]] != [d["file_name"] for d in fresh[3]] or \
        not torch.equal(fresh[0][0]["views"][0]["image"], fresh[3][0]["views"][0]["image"])


def test_workers_reproduce_the_single_process_order(folder):
    single = _take(PLRCTrainLoader(_stream(folder), num_workers=0), 5)
    loader = PLRCTrainLoader(_stream(folder), num_workers=2)
    loader.set_start_iter(0)
    for a, b in zip(single, _take(loader, 5)):
        _same_batch(a, b)


def test_epochs_are_permutations_and_seeds_differ(folder):
    stream = _stream(folder)
    assert sorted(stream.dataset_index(p) for p in range(5)) == list(range(5))
    assert sorted(stream.dataset_index(p) for p in range(5, 10)) == list(range(5))
    orders = {tuple(_stream(folder, seed=s).dataset_index(p) for p in range(5)) for s in range(6)}
    assert len(orders) > 1


def test_ranks_split_the_global_batch(folder):
    global_stream = _stream(folder, batch_size=4)
    ranks = [_stream(folder, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for j in range(3):
        whole = global_stream.batch(j)
        _same_batch(whole[:2], ranks[0].batch(j))
        _same_batch(whole[2:], ranks[1].batch(j))


def test_build_plrc_train_loader_from_cfg(folder, tmp_path):
    cfg = _cfg(folder)
    cfg.OUTPUT_DIR = str(tmp_path)
    loader = build_plrc_train_loader(cfg)
    first = _take(loader, 3)
    assert len(first[0]) == 2 and "views" in first[0][0]
    again = build_plrc_train_loader(cfg)
    again.set_start_iter(2)
    _same_batch(first[2], _take(again, 1)[0])
