"""View augmentations as detectron2 Augmentations with an explicit RNG.

Every Augmentation here draws its parameters from `aug_input.rng` (a numpy Generator: detectron2 passes the
AugInput attributes named in `get_transform`'s signature), never from the global np.random, and returns a
deterministic Transform. Use :class:`ViewAugInput` to carry the generator.

Geometry: :class:`RandomResizedCrop` returns CropTransform + ResizeTransform (+ HFlipTransform), so one
sampled transform maps the image, any map and any coordinates alike, and the crop box in original-image
coordinates follows from it (:func:`crop_box_wrt_image`). Photometric: colour jitter, grayscale, blur.
"""
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.transforms import (
    AugInput, Augmentation, CropTransform, HFlipTransform, NoOpTransform, ResizeTransform, Transform,
    TransformList,
)

__all__ = ["ViewAugInput", "sample_crop_box", "CV2ResizeTransform", "CV2HFlipTransform", "RandomResizedCrop",
           "crop_box_px", "crop_box_wrt_image", "ColorJitterTransform", "RandomColorJitter", "GrayscaleTransform",
           "RandomGrayscale", "GaussianBlurTransform", "RandomGaussianBlur"]

_TO_GRAY = {"RGB": cv2.COLOR_RGB2GRAY, "BGR": cv2.COLOR_BGR2GRAY}
_FROM_GRAY = {"RGB": cv2.COLOR_GRAY2RGB, "BGR": cv2.COLOR_GRAY2BGR}
_LUMA = {"RGB": (0.299, 0.587, 0.114), "BGR": (0.114, 0.587, 0.299)}  # ITU-R 601, as cv2's and PIL's grayscale
_TO_HSV = {"RGB": cv2.COLOR_RGB2HSV_FULL, "BGR": cv2.COLOR_BGR2HSV_FULL}
_FROM_HSV = {"RGB": cv2.COLOR_HSV2RGB_FULL, "BGR": cv2.COLOR_HSV2BGR_FULL}


class ViewAugInput(AugInput):
    """AugInput that also carries the numpy Generator the augmentations draw from."""

    def __init__(self, image: np.ndarray, rng: np.random.Generator, *, sem_seg: Optional[np.ndarray] = None):
        super().__init__(image, sem_seg=sem_seg)
        self.rng = rng


def sample_crop_box(rng: np.random.Generator, height: int, width: int, scale: Sequence[float],
                    ratio: Sequence[float], attempts: int = 10) -> Tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters (same algorithm, area fraction `scale`, w/h `ratio`
    log-uniform, 10 attempts then a centre crop), drawn from `rng`. Hand-written because torchvision's
    `get_params` draws from the global torch RNG. Returns x0, y0, w, h in pixels (w, h >= 1)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        u = rng.random(4)  # one draw per attempt: a Generator call costs more than the arithmetic here
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return min(int(u[2] * (width - w + 1)), width - w), min(int(u[3] * (height - h + 1)), height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    w, h = max(1, min(w, width)), max(1, min(h, height))
    return (width - w) // 2, (height - h) // 2, w, h


class CV2ResizeTransform(ResizeTransform):
    """ResizeTransform whose image path uses cv2 instead of a PIL round trip (bilinear; area averaging when
    shrinking by 2x or more, where bilinear would alias) and whose segmentation path is centre-aligned
    nearest neighbour. Coordinates and inverse are ResizeTransform's."""

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        strong_shrink = self.w >= 2 * self.new_w or self.h >= 2 * self.new_h
        mode = cv2.INTER_AREA if strong_shrink else cv2.INTER_LINEAR
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=mode)
        return out.reshape(out.shape[:2] + img.shape[2:])

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST_EXACT)


class CV2HFlipTransform(HFlipTransform):
    """HFlipTransform whose image path returns a contiguous array (cv2.flip) instead of a negative-stride view."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 3 and img.shape[2] in (1, 3, 4):
            return cv2.flip(img, 1).reshape(img.shape)
        return super().apply_image(img)


class RandomResizedCrop(Augmentation):
    """Crop a random area fraction `scale` with aspect ratio `ratio`, resize to size x size and flip
    horizontally with probability `flip_prob`. Returns a TransformList [Crop, Resize, (HFlip)]."""

    def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip_prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image, rng):
        height, width = image.shape[:2]
        x0, y0, w, h = sample_crop_box(rng, height, width, self.scale, self.ratio)
        return self.transform_for_box(x0, y0, w, h, height, width, flip=bool(rng.random() < self.flip_prob))

    def transform_for_box(self, x0, y0, w, h, height, width, flip: bool) -> TransformList:
        """The deterministic view transform of a given crop (pixels) and flip."""
        tfms = [CropTransform(x0, y0, w, h, width, height), CV2ResizeTransform(h, w, self.size, self.size)]
        if flip:
            tfms.append(CV2HFlipTransform(self.size))
        return TransformList(tfms)


def crop_box_px(tfm: TransformList) -> np.ndarray:
    """int64 (4,) x0, y0, x1, y1 of the view's crop in original-image pixels (unflipped)."""
    crop = next(t for t in tfm.transforms if isinstance(t, CropTransform))
    return np.array([crop.x0, crop.y0, crop.x0 + crop.w, crop.y0 + crop.h], dtype=np.int64)


def crop_box_wrt_image(tfm: TransformList, height: int, width: int, size: int) -> np.ndarray:
    """float32 (4,) crop box wrt image (points.py): the view corners (0, 0) and (S, S) mapped back through
    the inverse of the same transform, so a flipped view gets x0 > x1.

    RandomResizedCrop's own [Crop, Resize to S x S, (HFlip)] lists take a closed form (the corners map to the
    crop's corners, swapped in x if flipped): the generic inverse builds three transform objects per view."""
    kinds = [type(t) for t in tfm.transforms]
    if kinds in ([CropTransform, CV2ResizeTransform], [CropTransform, CV2ResizeTransform, CV2HFlipTransform]) \
            and (tfm.transforms[1].new_w, tfm.transforms[1].new_h) == (size, size):
        crop = tfm.transforms[0]
        x0, x1 = crop.x0, crop.x0 + crop.w
        if len(kinds) == 3:
            x0, x1 = x1, x0
        corners = np.array([[x0, crop.y0], [x1, crop.y0 + crop.h]], dtype=np.float64)
    else:
        corners = tfm.inverse().apply_coords(np.array([[0.0, 0.0], [size, size]]))
    return (corners / np.array([width, height], dtype=np.float64)).reshape(4).astype(np.float32)


class _PhotometricTransform(Transform):
    """Changes pixel values only: coordinates and segmentation pass through."""

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class ColorJitterTransform(_PhotometricTransform):
    """torchvision ColorJitter with fixed factors on uint8 (H, W, 3) images in `image_format` channel order:
    brightness/contrast/saturation factors (1 = unchanged), hue shift in turns, applied in `order`
    (a permutation of 0..3 = brightness, contrast, saturation, hue). Blends saturate to uint8 after each
    step, as torchvision does; cv2 keeps each step a single pass over the pixels."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float,
                 order: Sequence[int], image_format: str = "RGB"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        for op in self.order:
            img = (self._brightness, self._contrast, self._saturation, self._hue)[op](img)
        return img

    def _brightness(self, img):
        return cv2.convertScaleAbs(img, alpha=self.brightness)  # alpha >= 0: abs() changes nothing

    def _contrast(self, img):
        # mean luma from the channel means (one pass, no grayscale image): the mean of the unrounded luma
        mean = float(np.dot(cv2.mean(img)[:3], _LUMA[self.image_format]))
        return cv2.addWeighted(img, self.contrast, img, 0.0, (1.0 - self.contrast) * mean)

    def _saturation(self, img):
        gray = cv2.cvtColor(cv2.cvtColor(img, _TO_GRAY[self.image_format]), _FROM_GRAY[self.image_format])
        return cv2.addWeighted(img, self.saturation, gray, 1.0 - self.saturation, 0.0)

    def _hue(self, img):
        shift = int(round(self.hue * 255)) % 256  # 8-bit hue, as PIL's HSV mode that torchvision uses
        if shift == 0:
            return img  # skip the lossy uint8 HSV round trip
        hsv = cv2.cvtColor(img, _TO_HSV[self.image_format])
        hsv[..., 0] += np.uint8(shift)  # uint8 arithmetic wraps around: a rotation of the hue circle
        return cv2.cvtColor(hsv, _FROM_HSV[self.image_format])


class RandomColorJitter(Augmentation):
    """With probability `prob`: ColorJitter(brightness, contrast, saturation, hue) in a random order."""

    def __init__(self, brightness, contrast, saturation, hue, prob: float = 0.8, image_format: str = "RGB"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image, rng):
        if not rng.random() < self.prob:
            return NoOpTransform()
        factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in (self.brightness, self.contrast,
                                                                     self.saturation)]
        hue = rng.uniform(-self.hue, self.hue)
        order = [int(i) for i in rng.permutation(4)]
        return ColorJitterTransform(*factors, hue, order, self.image_format)


class GrayscaleTransform(_PhotometricTransform):
    """Luma (ITU-R 601) replicated into 3 channels."""

    def __init__(self, image_format: str = "RGB"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.cvtColor(cv2.cvtColor(img, _TO_GRAY[self.image_format]), _FROM_GRAY[self.image_format])


class RandomGrayscale(Augmentation):
    def __init__(self, prob: float = 0.2, image_format: str = "RGB"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image, rng):
        return GrayscaleTransform(self.image_format) if rng.random() < self.prob else NoOpTransform()


class GaussianBlurTransform(_PhotometricTransform):
    """Gaussian blur with standard deviation `sigma` (pixels of the view)."""

    def __init__(self, sigma: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.GaussianBlur(img, (0, 0), sigmaX=self.sigma, sigmaY=self.sigma)


class RandomGaussianBlur(Augmentation):
    """With probability `prob`: blur with sigma ~ U[sigma[0], sigma[1]]."""

    def __init__(self, sigma=(0.1, 2.0), prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image, rng):
        if not rng.random() < self.prob:
            return NoOpTransform()
        return GaussianBlurTransform(float(rng.uniform(self.sigma[0], self.sigma[1])))
