"""The resumable, deterministic PLRC training stream.

The stream is a pure function of (seed, global sample position):
  * global batch j holds positions j*G .. j*G + G - 1 (G = SOLVER.IMS_PER_BATCH); rank r of W ranks takes
    the slice r*B .. r*B + B - 1 of it (B = G / W);
  * position p reads dataset index perm_e[p mod N] with e = p // N, perm_e a permutation seeded by (seed, e);
  * all augmentation randomness of position p comes from np.random.default_rng([seed, p, attempt]);
  * an unreadable file is skipped (counted) and replaced by a dataset index drawn from that generator
    (attempt = 1, 2, ...), so the replacement is deterministic too.
With DATALOADER.NUM_WORKERS = K > 0, worker w produces the whole batches j = start + w + k*K, which
torch's DataLoader returns round-robin, i.e. in order. `set_start_iter(i)` (called by the Trainer after
resume_or_load) makes the stream start at batch i: a resumed run sees exactly the batches an uninterrupted
run would. With SEED < 0 a random seed is drawn once per start (shared by all ranks), so a resumed run then
sees different samples.
"""
import logging
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from .datasets import ensure_datasets_registered
from .mapper import PLRCDatasetMapper

__all__ = ["PLRCTrainStream", "PLRCTrainLoader", "build_plrc_train_loader", "load_dataset_dicts"]

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 100  # consecutive unreadable files tolerated at one position before the run stops


class PLRCTrainStream(torch.utils.data.IterableDataset):
    """Yields (batch: list of B mapped dicts, stats: dict of counter increments) from batch `start_iter` on."""

    def __init__(self, dataset: Sequence[dict], mapper, *, seed: int, batch_size: int, rank: int = 0,
                 world_size: int = 1):
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.start_iter = 0
        self._perm_epoch, self._perm = -1, None

    def dataset_index(self, position: int) -> int:
        num = len(self.dataset)
        epoch = position // num
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(num)
            self._perm_epoch = epoch
        return int(self._perm[position % num])

    def sample(self, position: int) -> dict:
        """The mapped sample at a global position (deterministic given seed, dataset and files)."""
        index = self.dataset_index(position)
        for attempt in range(MAX_REPLACEMENTS):
            rng = np.random.default_rng([self.seed, position, attempt])
            if attempt > 0:
                index = int(rng.integers(len(self.dataset)))
            out = self.mapper(self.dataset[index], rng=rng)
            if out is not None:
                return out
        raise RuntimeError(f"{MAX_REPLACEMENTS} unreadable images in a row at sample position {position}; "
                           "is the dataset corrupt? (see the warnings above)")

    def batch(self, j: int) -> List[dict]:
        """Rank-local batch j: the B samples at positions (j * W + rank) * B + b."""
        first = (j * self.world_size + self.rank) * self.batch_size
        return [self.sample(first + b) for b in range(self.batch_size)]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        j = self.start_iter + worker
        while True:
            before = dict(self.mapper.stats)
            batch = self.batch(j)
            yield batch, {k: v - before.get(k, 0) for k, v in self.mapper.stats.items()}
            j += num_workers


def _identity(x):
    return x


def _worker_init(_):
    # Deliberately no cv2.setNumThreads here: changing OpenCV's thread pool in a forked worker whose
    # parent already used that pool can deadlock. The per-sample cv2 calls are small single-core work.
    pass


class PLRCTrainLoader:
    """Iterable of rank-local batches (lists of mapped dicts), like detectron2's train loader, plus
    `set_start_iter`. Each iteration puts the cumulative data counters into the event storage:
    data/skipped_files, data/crop_retries, data/crop_failures (this rank, since the start)."""

    def __init__(self, stream: PLRCTrainStream, num_workers: int = 0):
        self.stream, self.num_workers = stream, int(num_workers)
        self.totals: Dict[str, int] = Counter()

    def set_start_iter(self, start_iter: int) -> None:
        """Call before iterating; an iterator already created keeps its start."""
        self.stream.start_iter = int(start_iter)

    def _report(self, stats: Dict[str, int]) -> None:
        self.totals.update(stats)
        if stats.get("skipped_files"):
            logger.warning(f"{stats['skipped_files']} unreadable image(s) skipped in this batch, "
                           f"{self.totals['skipped_files']} so far (data/skipped_files)")
        from detectron2.utils.events import get_event_storage

        try:
            storage = get_event_storage()
        except AssertionError:  # no EventStorage outside a training loop
            return
        for key, value in self.totals.items():
            storage.put_scalar(f"data/{key}", value, smoothing_hint=False)

    def __iter__(self):
        loader = torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
            worker_init_fn=_worker_init if self.num_workers else None)
        for batch, stats in loader:
            self._report(stats)
            yield batch


def load_dataset_dicts(names: Sequence[str]) -> List[dict]:
    """Concatenated dataset dicts of registered datasets; an empty dataset raises naming it."""
    dicts = []
    for name in names:
        part = DatasetCatalog.get(name)
        if not part:
            raise ValueError(f"Dataset {name!r} is empty")
        dicts.extend(part)
    return dicts


def build_plrc_train_loader(cfg) -> PLRCTrainLoader:
    """The pre-training loader of cfg.DATASETS.TRAIN with PLRCDatasetMapper(cfg); batch per rank =
    SOLVER.IMS_PER_BATCH / world size; seed = cfg.SEED (or one shared random seed when < 0)."""
    names = list(cfg.DATASETS.TRAIN)
    ensure_datasets_registered(names, cfg.OUTPUT_DIR, cfg.INPUT.PLRC.FILE_INDEX)
    dicts = load_dataset_dicts(names)
    world_size, rank = comm.get_world_size(), comm.get_rank()
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    batch_size = cfg.SOLVER.IMS_PER_BATCH // world_size
    logger.info(f"PLRC train stream: {len(dicts)} images from {names}, seed {seed}, "
                f"{batch_size} images per batch on each of {world_size} ranks")
    stream = PLRCTrainStream(DatasetFromList(dicts, copy=False, serialize=True), PLRCDatasetMapper(cfg),
                             seed=seed, batch_size=batch_size, rank=rank, world_size=world_size)
    return PLRCTrainLoader(stream, cfg.DATALOADER.NUM_WORKERS)
