"""The embedded demo data: procedurally generated scenes (demo_scenes.py), generated once, deterministically
from a seed, into `$DETECTRON2_DATASETS/plrc_demo` (default `datasets/plrc_demo`, gitignored).

Registered at import of plrc_d2.data (generation happens when a dataset is first requested):
  plrc_demo_unlabeled   unlabeled images for pre-training ({"file_name", "image_id", "height", "width"})
  plrc_demo_train       COCO-format instance masks (polygons) for fine-tuning   } evaluator_type "coco",
  plrc_demo_val         COCO-format instance masks for evaluation                } thing_classes = CATEGORIES
Layout: <root>/{unlabeled,train,val}/NNNNNN.jpg, <root>/annotations/{unlabeled,train,val}.json,
<root>/DONE (the spec the files were made from; a different spec regenerates).
"""
import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .demo_scenes import CATEGORIES, render_scene

__all__ = ["DemoSpec", "DEMO_DATASETS", "get_demo_root", "prepare_demo_data", "prepare_demo_dataset",
           "register_demo_datasets"]

logger = logging.getLogger(__name__)

DEMO_DATASETS = {"plrc_demo_unlabeled": "unlabeled", "plrc_demo_train": "train", "plrc_demo_val": "val"}


@dataclass(frozen=True)
class DemoSpec:
    """Sizes of the demo splits. Defaults: pre-training on 3000 images and two short Mask R-CNN fine-tunes
    fit in minutes on 2 CPU cores; generation takes well under a minute on one core."""

    seed: int = 0
    num_unlabeled: int = 3000
    num_train: int = 300
    num_val: int = 100
    size_range: Tuple[int, int] = (128, 256)  # image height and width, pixels, each drawn uniformly
    jpeg_quality: int = 90


def get_demo_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "plrc_demo")


def _write_split(root: str, split: str, count: int, spec: DemoSpec, progress) -> None:
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([spec.seed, list(DEMO_DATASETS.values()).index(split), index])
        image, instances = render_scene(rng, tuple(spec.size_range))
        file_name = f"{split}/{index:06d}.jpg"
        cv2.imwrite(os.path.join(root, file_name), image[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
        images.append({"id": index + 1, "file_name": file_name, "height": image.shape[0],
                       "width": image.shape[1]})
        for ann in instances:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": index + 1})
        progress.update(1)
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CATEGORIES)]}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"{split}.json"), "w") as f:
        json.dump(coco, f)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def prepare_demo_data(root: Optional[str] = None, spec: DemoSpec = DemoSpec()) -> str:
    """Generates the demo data into `root` (default get_demo_root()) unless it is already there for `spec`.
    Safe to call from several processes at once (a file lock). Returns root."""
    from tqdm import tqdm

    root = root or get_demo_root()
    marker = os.path.join(root, "DONE")
    want = json.dumps(asdict(spec), sort_keys=True)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_text(marker) == want:
            return root
        counts = {"unlabeled": spec.num_unlabeled, "train": spec.num_train, "val": spec.num_val}
        logger.info(f"Generating the PLRC demo data into {root} (seed {spec.seed}, {counts})")
        with tqdm(total=sum(counts.values()), desc="PLRC demo data", unit="img", mininterval=2.0) as progress:
            for split, count in counts.items():
                _write_split(root, split, count, spec, progress)
        with open(marker, "w") as f:
            f.write(want)
    return root


class _DemoSplit:
    """DatasetCatalog function of one demo split (a class, so it pickles and carries root/spec)."""

    def __init__(self, name: str, root: Optional[str], spec: DemoSpec):
        self.name, self.root, self.spec = name, root, spec

    def prepare(self) -> str:
        """Generates the data if missing and points the metadata at it. Returns the root."""
        root = prepare_demo_data(self.root, self.spec)
        if DEMO_DATASETS[self.name] != "unlabeled":
            _set_metadata(self.name, root)
        return root

    def __call__(self):
        root = self.prepare()
        split = DEMO_DATASETS[self.name]
        json_file = os.path.join(root, "annotations", f"{split}.json")
        if split == "unlabeled":
            with open(json_file) as f:
                images = json.load(f)["images"]
            return [{"file_name": os.path.join(root, im["file_name"]), "image_id": im["id"],
                     "height": im["height"], "width": im["width"]} for im in images]
        return load_coco_json(json_file, root, self.name)


def _set_metadata(name: str, root: str) -> None:
    split = DEMO_DATASETS[name]
    meta = MetadataCatalog.get(name)
    json_file = os.path.join(root, "annotations", f"{split}.json")
    if meta.get("json_file", json_file) != json_file:  # the root moved ($DETECTRON2_DATASETS changed)
        MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
    meta.set(json_file=json_file, image_root=root, evaluator_type="coco", thing_classes=list(CATEGORIES))


def prepare_demo_dataset(name: str) -> str:
    """Generates the data behind a registered demo dataset `name` (its own root and spec). Returns the root."""
    loader = DatasetCatalog[name]
    if not isinstance(loader, _DemoSplit):
        raise TypeError(f"Dataset {name!r} is registered by something other than plrc_d2.data.demo")
    return loader.prepare()


def register_demo_datasets(root: Optional[str] = None, spec: DemoSpec = DemoSpec()) -> None:
    """(Re-)registers the three demo datasets for `root` (None = get_demo_root() at load time).
    Tests call this with a tmp root and a tiny spec."""
    for name, split in DEMO_DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, _DemoSplit(name, root, spec))
        if split != "unlabeled":
            _set_metadata(name, root or get_demo_root())
