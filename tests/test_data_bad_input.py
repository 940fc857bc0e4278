"""Every bad-input case: unreadable files are skipped and counted, odd formats decode, bad folders fail early."""
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from PIL import Image

from plrc_d2.config import add_plrc_config
from plrc_d2.data import PLRCDatasetMapper, ensure_datasets_registered
from plrc_d2.data.image_io import BadImageError, read_image_uint8
from plrc_d2.data.loader import PLRCTrainLoader, PLRCTrainStream

H, W = 12, 18


def _rgb():
    img = np.zeros((H, W, 3), np.uint8)
    img[:, :, 0] = 200  # red
    img[: H // 2, : W // 3] = [10, 220, 30]  # green top-left block
    return img


def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    jpg = tmp_path / "full.jpg"
    Image.fromarray(_rgb()).save(jpg, quality=95)
    (tmp_path / "truncated.jpg").write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n" * 10)
    corrupt = bytearray(jpg.read_bytes())
    corrupt[2:40] = b"\x00" * 38  # header destroyed
    (tmp_path / "corrupt.jpg").write_bytes(bytes(corrupt))
    return ["truncated.jpg", "truncated.png", "zero.jpg", "text.jpg", "corrupt.jpg", "missing.png"]


def test_unreadable_files_raise_bad_image(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(BadImageError, match=name):
            read_image_uint8(str(tmp_path / name))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_odd_modes_decode_to_rgb(tmp_path, mode):
    rgb = _rgb()
    if mode == "I;16":
        gray = (np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257)
        image, expected = Image.fromarray(gray), np.repeat(gray[:, :, None] // 257, 3, axis=2)
    else:
        image = Image.fromarray(rgb).convert(mode)
        expected = np.asarray(image.convert("RGB"))
    ext = "jpg" if mode == "CMYK" else "png"
    path = str(tmp_path / f"img.{ext}")
    image.save(path, **({"quality": 100} if ext == "jpg" else {}))
    out = read_image_uint8(path, "RGB")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= (8 if ext == "jpg" else 1)
    np.testing.assert_array_equal(read_image_uint8(path, "BGR"), out[:, :, ::-1])


def test_exif_rotated_photo(tmp_path):
    image = Image.fromarray(_rgb())
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = str(tmp_path / "exif.jpg")
    image.save(path, exif=exif, quality=100)
    out = read_image_uint8(path, "RGB")
    assert out.shape == (W, H, 3)
    assert out[1, -2, 1] > 150 and out[-2, 1, 0] > 150  # the green block moved to the top-right corner


def _cfg():
    cfg = add_plrc_config(get_cfg())
    cfg.INPUT.PLRC.CROP_SIZE = 32
    cfg.INPUT.PLRC.REGION_MAP_SIZE = 8
    cfg.INPUT.PLRC.POINTS_PER_REGION = 4
    return cfg


def test_image_smaller_than_crop(tmp_path):
    path = str(tmp_path / "tiny.png")
    Image.fromarray(np.full((3, 5, 3), 90, np.uint8)).save(path)
    out = PLRCDatasetMapper(_cfg())({"file_name": path}, rng=np.random.default_rng(0))
    assert out["views"][0]["image"].shape == (3, 32, 32) and out["region_valid"][0]


def test_bad_files_are_skipped_counted_and_logged_to_storage(tmp_path):
    bad = _bad_files(tmp_path)
    dicts = [{"file_name": str(tmp_path / n)} for n in bad] + [{"file_name": str(tmp_path / "good.png")}]
    mapper = PLRCDatasetMapper(_cfg())
    assert mapper({"file_name": str(tmp_path / "zero.jpg")}) is None and mapper.stats["skipped_files"] == 1
    loader = PLRCTrainLoader(PLRCTrainStream(dicts, PLRCDatasetMapper(_cfg()), seed=0, batch_size=4))
    with EventStorage() as storage:
        batch = next(iter(loader))
    assert len(batch) == 4 and all(b["file_name"].endswith("good.png") for b in batch)
    skipped = storage.history("data/skipped_files").latest()
    assert skipped == loader.totals["skipped_files"] >= 1


@pytest.mark.parametrize("case", ["missing", "empty", "no_images"])
def test_empty_or_missing_folder_fails_at_start_naming_the_path(tmp_path, case):
    folder = tmp_path / "images"
    if case != "missing":
        folder.mkdir()
    if case == "no_images":
        (folder / "notes.txt").write_text("no images here")
    with pytest.raises((FileNotFoundError, ValueError), match=str(folder)):
        ensure_datasets_registered([f"folder:{folder}"], str(tmp_path / "out"))
