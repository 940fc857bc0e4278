"""View transforms: crop boxes, flips and coordinates agree; photometric transforms are deterministic."""
import numpy as np
import pytest

from plrc_d2.data.augmentation import (
    ColorJitterTransform, GaussianBlurTransform, GrayscaleTransform, RandomColorJitter, RandomResizedCrop,
    ViewAugInput, crop_box_px, crop_box_wrt_image, sample_crop_box,
)
from plrc_d2.data.points import view_to_image

H, W = 20, 30


def _unique_image():
    """uint8 (H, W, 3): channel 0 = row, channel 1 = column, so every pixel names itself."""
    rows, cols = np.mgrid[0:H, 0:W]
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_view_pixel_maps_back_to_same_original_pixel(flip):
    size = 32
    aug = RandomResizedCrop(size)
    # crop 7 x 9 pixels at (11, 4): (j + 0.5) * 7 / 32 never hits a pixel border, so nearest is unambiguous
    tfm = aug.transform_for_box(11, 4, 7, 9, H, W, flip=flip)
    view = tfm.apply_segmentation(_unique_image())  # nearest neighbour through the same transform
    box = crop_box_wrt_image(tfm, H, W, size)
    assert (box[0] > box[2]) == flip
    for i, j in [(0, 0), (3, 30), (31, 5), (16, 16)]:
        p_view = np.array([(j + 0.5) / size, (i + 0.5) / size])
        x, y = view_to_image(p_view, box) * np.array([W, H])
        assert (view[i, j, 0], view[i, j, 1]) == (int(y), int(x))


@pytest.mark.parametrize("seed", range(4))
def test_apply_coords_agrees_with_crop_box(seed):
    size = 16
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.uint8)
    tfm = RandomResizedCrop(size, flip_prob=0.5).get_transform(image, rng)
    box = crop_box_wrt_image(tfm, H, W, size)
    x0, y0, x1, y1 = crop_box_px(tfm)
    pts_img = np.array([[x0 + 0.25, y0 + 0.5], [x1 - 0.5, y1 - 0.25], [(x0 + x1) / 2, y0 + 1.0]])
    pts_view = tfm.apply_coords(pts_img.copy()) / size
    np.testing.assert_allclose(view_to_image(pts_view, box) * [W, H], pts_img, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_crop_box_closed_form_equals_inverse_transform(seed):
    size = 24
    tfm = RandomResizedCrop(size, flip_prob=0.5).get_transform(np.zeros((H, W, 3), np.uint8),
                                                                np.random.default_rng(seed))
    corners = tfm.inverse().apply_coords(np.array([[0.0, 0.0], [size, size]]))
    want = (corners / np.array([W, H], dtype=np.float64)).reshape(4).astype(np.float32)
    np.testing.assert_allclose(crop_box_wrt_image(tfm, H, W, size), want, rtol=0, atol=1e-6)


def test_sample_crop_box_bounds_and_determinism():
    for seed in range(50):
        x0, y0, w, h = sample_crop_box(np.random.default_rng(seed), H, W, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= x0 and 0 <= y0 and w >= 1 and h >= 1 and x0 + w <= W and y0 + h <= H
        assert 0.2 * H * W * 0.8 <= w * h <= H * W
    a = sample_crop_box(np.random.default_rng(7), H, W, (0.2, 1.0), (3 / 4, 4 / 3))
    assert a == sample_crop_box(np.random.default_rng(7), H, W, (0.2, 1.0), (3 / 4, 4 / 3))
    # an impossible aspect ratio falls back to a centre crop of the clamped ratio
    assert sample_crop_box(np.random.default_rng(0), 10, 100, (0.9, 1.0), (1.0, 1.0)) == (45, 0, 10, 10)


def test_augmentation_draws_from_the_given_generator():
    image = np.zeros((H, W, 3), np.uint8)
    aug = RandomResizedCrop(16)
    boxes = [crop_box_px(aug(ViewAugInput(image, np.random.default_rng(3)))).tolist() for _ in range(2)]
    assert boxes[0] == boxes[1]
    aug_input = ViewAugInput(image, np.random.default_rng(3))
    aug(aug_input)
    assert aug_input.image.shape == (16, 16, 3)  # AugInput applied the sampled transform


def test_photometric_transforms():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    identity = ColorJitterTransform(1.0, 1.0, 1.0, 0.0, [0, 1, 2, 3])
    np.testing.assert_array_equal(identity.apply_image(img), img)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    hue_half_turn = ColorJitterTransform(1.0, 1.0, 1.0, 0.5, [3]).apply_image(red)
    assert hue_half_turn[0, 0, 0] < 10 and hue_half_turn[0, 0, 1:].min() > 240  # red -> cyan
    dark = ColorJitterTransform(0.5, 1.0, 1.0, 0.0, [0, 1, 2, 3]).apply_image(img)
    np.testing.assert_allclose(dark, np.round(img * 0.5), atol=1)
    gray = GrayscaleTransform("RGB").apply_image(img)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert GrayscaleTransform("RGB").apply_image(red)[0, 0, 0] == 76  # 0.299 * 255
    assert GrayscaleTransform("BGR").apply_image(red)[0, 0, 0] == 29  # 0.114 * 255
    for fmt, rgb in (("RGB", img), ("BGR", img[..., ::-1])):  # contrast 0: every pixel = the mean luma
        flat = ColorJitterTransform(1.0, 0.0, 1.0, 0.0, [1], fmt).apply_image(np.ascontiguousarray(rgb))
        luma = (img.astype(np.float64) @ [0.299, 0.587, 0.114]).mean()
        assert (flat == np.round(luma)).all()
    no_sat = ColorJitterTransform(1.0, 1.0, 0.0, 0.0, [2]).apply_image(img)
    np.testing.assert_array_equal(no_sat, gray)
    blurred = GaussianBlurTransform(1.5).apply_image(img)
    assert blurred.std() < img.std()
    coords = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(identity.apply_coords(coords.copy()), coords)
    a = RandomColorJitter(0.4, 0.4, 0.4, 0.1, prob=1.0).get_transform(img, np.random.default_rng(5))
    b = RandomColorJitter(0.4, 0.4, 0.4, 0.1, prob=1.0).get_transform(img, np.random.default_rng(5))
    np.testing.assert_array_equal(a.apply_image(img), b.apply_image(img))
