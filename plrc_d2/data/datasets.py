"""Unlabeled image datasets in detectron2's DatasetCatalog.

  "folder:/path/to/images"     any folder, searched recursively for IMAGE_EXTENSIONS (any case); registered
                               on the fly by ensure_datasets_registered (no code needed).
  register_unlabeled_images(name, root)          the same from Python.
  imagenet_train_unlabeled     $DETECTRON2_DATASETS/imagenet/train/<class>/*.JPEG (labels ignored)
  coco_2017_train_unlabeled    $DETECTRON2_DATASETS/coco/train2017/*.jpg (labels ignored)
  plrc_demo_*                  the embedded demo data (demo.py)

Dataset dicts are {"file_name": absolute path, "image_id": int}. The file index (sorted paths relative to the
root) is cached at <OUTPUT_DIR>/file_index/<name>-<hash>.txt so a large folder is walked once; delete the
file to re-walk. A list file (INPUT.PLRC.FILE_INDEX; one path per line, relative to the root or absolute)
replaces the walk. A missing or empty folder fails at start-up with a message naming the path.
"""
import hashlib
import logging
import os
import re
from typing import Iterable, List, Optional

from detectron2.data import DatasetCatalog

from .demo import DEMO_DATASETS, prepare_demo_dataset

__all__ = ["IMAGE_EXTENSIONS", "BUILTIN_UNLABELED", "FOLDER_PREFIX", "list_images", "register_unlabeled_images",
           "register_builtin_unlabeled", "ensure_datasets_registered"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDER_PREFIX = "folder:"
# name -> folder relative to $DETECTRON2_DATASETS (resolved when used, as detectron2's builtins are)
BUILTIN_UNLABELED = {"imagenet_train_unlabeled": "imagenet/train", "coco_2017_train_unlabeled": "coco/train2017"}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str) -> List[str]:
    """Sorted paths (relative to root) of every image file under root, recursively (symlinks followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        found.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if _is_image(f))
    return sorted(found)


def _has_image(root: str) -> bool:
    """True as soon as one image file is found (cheap start-up check of a huge folder)."""
    for _, _, filenames in os.walk(root, followlinks=True):
        if any(_is_image(f) for f in filenames):
            return True
    return False


def _read_list_file(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def _check_folder(root: str, what: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what}: image folder {root!r} does not exist (or is not a directory)."
                                f" Check the path or $DETECTRON2_DATASETS.")
    if not _has_image(root):
        raise ValueError(f"{what}: image folder {root!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}, "
                         "searched recursively).")


class _ImageFolder:
    """DatasetCatalog function of an image folder (a class: picklable, carries root and index paths)."""

    def __init__(self, name: str, root: str, list_file: str = "", cache_file: str = ""):
        self.name, self.root, self.list_file, self.cache_file = name, root, list_file, cache_file

    def _paths(self) -> List[str]:
        if self.list_file:
            return _read_list_file(self.list_file)
        if self.cache_file and os.path.exists(self.cache_file):
            logger.info(f"Dataset {self.name}: file index from {self.cache_file}")
            return _read_list_file(self.cache_file)
        paths = list_images(self.root)
        if self.cache_file and paths:
            os.makedirs(os.path.dirname(self.cache_file), exist_ok=True)
            tmp = f"{self.cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write("".join(p + "\n" for p in paths))
            os.replace(tmp, self.cache_file)
            logger.info(f"Dataset {self.name}: indexed {len(paths)} images into {self.cache_file}")
        return paths

    def __call__(self) -> List[dict]:
        paths = self._paths()
        if not paths:
            source = self.list_file or self.root
            raise ValueError(f"Dataset {self.name}: no images in {source!r}")
        return [{"file_name": os.path.join(self.root, p), "image_id": i} for i, p in enumerate(paths)]


def _register(name: str, loader) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, loader)


def register_unlabeled_images(name: str, root: str, list_file: str = "", cache_file: str = "") -> None:
    """Registers every image under `root` (recursively) as dataset `name`; labels are never read.

    Args:
        list_file: optional file of image paths (relative to root or absolute) used instead of walking root.
        cache_file: optional path where the walked index is stored and reused on later starts.
    """
    _register(name, _ImageFolder(name, os.path.abspath(root), list_file, cache_file))


def _builtin_root(name: str) -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), BUILTIN_UNLABELED[name])


class _BuiltinFolder:
    """Resolves $DETECTRON2_DATASETS when the dataset is loaded, not at import."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self):
        root = _builtin_root(self.name)
        _check_folder(root, f"Dataset {self.name}")
        return _ImageFolder(self.name, os.path.abspath(root))()


def register_builtin_unlabeled() -> None:
    for name in BUILTIN_UNLABELED:
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, _BuiltinFolder(name))


def _cache_file(output_dir: str, name: str, root: str) -> str:
    if not output_dir:
        return ""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(root)) or "root")
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:10]
    return os.path.join(output_dir, "file_index", f"{slug}-{digest}.txt")


def _folder_root(name: str) -> Optional[str]:
    if name.startswith(FOLDER_PREFIX):
        return name[len(FOLDER_PREFIX):]
    if name in BUILTIN_UNLABELED:
        return _builtin_root(name)
    return None


def ensure_datasets_registered(names: Iterable[str], output_dir: str = "", file_index: str = "") -> None:
    """Makes every name in `names` loadable, failing now (not mid-run) with a message naming the problem.

    "folder:<path>" and the builtin unlabeled names are (re-)registered with their file index cached under
    `output_dir` (or read from `file_index`, which then must belong to exactly one such dataset); their
    folder must exist and hold an image. Demo names generate the demo data if missing. Any other name must
    already be in DatasetCatalog, else KeyError listing the registered names.
    """
    names = list(names)
    folders = [n for n in names if _folder_root(n) is not None]
    if file_index and len(folders) != 1:
        raise ValueError(f"INPUT.PLRC.FILE_INDEX={file_index!r} needs exactly one folder/unlabeled dataset in "
                         f"DATASETS.TRAIN, got {folders}")
    if file_index and not os.path.isfile(file_index):
        raise FileNotFoundError(f"INPUT.PLRC.FILE_INDEX list file {file_index!r} does not exist")
    for name in names:
        root = _folder_root(name)
        if root is not None:
            _check_folder(root, f"Dataset {name!r}")
            cache = _cache_file(output_dir, name, root)
            _register(name, _ImageFolder(name, os.path.abspath(root), file_index, cache))
        elif name in DEMO_DATASETS:
            prepare_demo_dataset(name)
        elif name not in DatasetCatalog.list():
            registered = ", ".join(sorted(DatasetCatalog.list()))
            raise KeyError(f"Dataset {name!r} is not registered. Use 'folder:/path/to/images' for a folder of "
                           f"images, register it with plrc_d2.data.register_unlabeled_images, or pick one of: "
                           f"{registered}")
