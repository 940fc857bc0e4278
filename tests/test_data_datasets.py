"""Dataset registration: "folder:" names, file index cache and list file, builtins, errors, the demo data."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from plrc_d2.data import (
    DemoSpec, ensure_datasets_registered, list_images, prepare_demo_data, register_demo_datasets,
    register_unlabeled_images,
)

TINY_DEMO = DemoSpec(seed=3, num_unlabeled=6, num_train=4, num_val=3, size_range=(48, 64))


def _tree(root):
    for rel in ("a/x.jpg", "a/b/y.PNG", "c.JpEg", "d.webp", "e.bmp"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, format=Image.registered_extensions()[
            os.path.splitext(rel)[1].lower()])
    (root / "a" / "labels.txt").write_text("ignored")
    (root / "f.gif").write_bytes(b"GIF89a")  # not an accepted extension
    return ["a/b/y.PNG", "a/x.jpg", "c.JpEg", "d.webp", "e.bmp"]


def test_folder_name_registers_recursively_and_caches_index(tmp_path):
    expected = _tree(tmp_path / "imgs")
    assert list_images(str(tmp_path / "imgs")) == expected
    name = f"folder:{tmp_path / 'imgs'}"
    out = tmp_path / "out"
    ensure_datasets_registered([name], str(out))
    dicts = DatasetCatalog.get(name)
    assert [os.path.relpath(d["file_name"], tmp_path / "imgs") for d in dicts] == expected
    assert [d["image_id"] for d in dicts] == list(range(5))
    index_files = os.listdir(out / "file_index")
    assert len(index_files) == 1
    # the cached index is used on the next start: a new file is not seen until the index is deleted
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "z.png")
    ensure_datasets_registered([name], str(out))
    assert len(DatasetCatalog.get(name)) == 5
    os.remove(out / "file_index" / index_files[0])
    ensure_datasets_registered([name], str(out))
    assert len(DatasetCatalog.get(name)) == 6


def test_file_index_list_file(tmp_path):
    _tree(tmp_path / "imgs")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen images\nc.JpEg\n{tmp_path / 'imgs' / 'e.bmp'}\n")
    name = f"folder:{tmp_path / 'imgs'}"
    ensure_datasets_registered([name], "", file_index=str(listing))
    files = [d["file_name"] for d in DatasetCatalog.get(name)]
    assert files == [str(tmp_path / "imgs" / "c.JpEg"), str(tmp_path / "imgs" / "e.bmp")]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        ensure_datasets_registered([name], "", file_index=str(tmp_path / "nope.txt"))


def test_register_unlabeled_images_function(tmp_path):
    _tree(tmp_path / "imgs")
    register_unlabeled_images("my_test_images", str(tmp_path / "imgs"))
    assert len(DatasetCatalog.get("my_test_images")) == 5
    DatasetCatalog.remove("my_test_images")


def test_unknown_name_lists_registered():
    with pytest.raises(KeyError, match="imagenet_train_unlabeled"):
        ensure_datasets_registered(["no_such_dataset"], "")


def test_builtin_imagenet_from_detectron2_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "imagenet" / "train")):
        ensure_datasets_registered(["imagenet_train_unlabeled"], "")
    for cls in ("n01", "n02"):
        (tmp_path / "imagenet" / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imagenet" / "train" / cls / "a.JPEG")
    ensure_datasets_registered(["imagenet_train_unlabeled"], "")
    files = [os.path.relpath(d["file_name"], tmp_path) for d in DatasetCatalog.get("imagenet_train_unlabeled")]
    assert files == ["imagenet/train/n01/a.JPEG", "imagenet/train/n02/a.JPEG"]


def test_demo_data_tiny_deterministic_and_coco(tmp_path):
    root_a, root_b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_demo_data(root_a, TINY_DEMO)
    prepare_demo_data(root_b, TINY_DEMO)
    for split in ("unlabeled", "train", "val"):
        with open(os.path.join(root_a, "annotations", f"{split}.json")) as fa, \
                open(os.path.join(root_b, "annotations", f"{split}.json")) as fb:
            assert json.load(fa) == json.load(fb)
    assert open(os.path.join(root_a, "train", "000001.jpg"), "rb").read() == \
        open(os.path.join(root_b, "train", "000001.jpg"), "rb").read()
    register_demo_datasets(root_a, TINY_DEMO)
    try:
        ensure_datasets_registered(["plrc_demo_unlabeled", "plrc_demo_train", "plrc_demo_val"], "")
        assert len(DatasetCatalog.get("plrc_demo_unlabeled")) == 6
        train = DatasetCatalog.get("plrc_demo_train")
        assert len(train) == 4 and sum(len(d["annotations"]) for d in train) > 0
        ann = train[0]["annotations"][0]
        assert 0 <= ann["category_id"] < 4 and len(ann["segmentation"][0]) >= 6
        meta = MetadataCatalog.get("plrc_demo_val")
        assert meta.evaluator_type == "coco" and meta.thing_classes == ["disc", "box", "triangle", "star"]
        assert meta.json_file == os.path.join(root_a, "annotations", "val.json")
        from detectron2.evaluation import COCOEvaluator

        COCOEvaluator("plrc_demo_val", output_dir=str(tmp_path / "eval"))  # loads the json
    finally:
        register_demo_datasets()  # back to the default location for other tests
