"""Data for PLRC pre-training: datasets (folders, ImageNet/COCO images, the embedded demo data), region
maps, view augmentations, points, the PLRCDatasetMapper and the resumable train stream.

Importing this package registers the builtin unlabeled datasets and the demo datasets (lazily: nothing is
read or generated until a dataset is requested).
"""
from .datasets import (
    BUILTIN_UNLABELED, IMAGE_EXTENSIONS, ensure_datasets_registered, list_images, register_builtin_unlabeled,
    register_unlabeled_images,
)
from .demo import DemoSpec, get_demo_root, prepare_demo_data, register_demo_datasets
from .loader import PLRCTrainLoader, PLRCTrainStream, build_plrc_train_loader
from .mapper import PLRCDatasetMapper

__all__ = [
    "PLRCDatasetMapper", "build_plrc_train_loader", "ensure_datasets_registered", "register_unlabeled_images",
    "PLRCTrainLoader", "PLRCTrainStream", "DemoSpec", "get_demo_root", "prepare_demo_data",
    "register_demo_datasets", "list_images", "IMAGE_EXTENSIONS", "BUILTIN_UNLABELED",
]

register_builtin_unlabeled()
register_demo_datasets()
