"""Decoding one image file robustly: (H, W, 3) uint8 in the requested channel order, or BadImageError.

Fast path: cv2.imdecode (libjpeg-turbo; applies EXIF orientation; grayscale, palette, RGBA, CMYK and 16-bit
files come out as 8-bit 3-channel), ~1.5x faster than PIL on 500x375 JPEGs. Anything cv2 declines, and any
JPEG without its end-of-image marker (cv2 would silently return a half-grey truncated image), goes through
PIL via detectron2's read_image, which raises on truncated or corrupt files.
"""
from typing import Optional

import cv2
import numpy as np
from detectron2.data import detection_utils
from PIL import Image

__all__ = ["BadImageError", "read_image_uint8"]

# PIL modes whose samples exceed 8 bits; PIL's own convert("RGB") clips them instead of rescaling.
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BadImageError(Exception):
    """The file is missing, empty, not an image, truncated or otherwise undecodable."""


def _high_bit_to_uint8(image: Image.Image, image_format: str) -> np.ndarray:
    """16-bit / 32-bit single-channel images: rescale to 0-255 (16-bit range, or 0-1 floats), replicate."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    elif image.mode != "F" and (image.mode.startswith("I;16") or values.max(initial=0.0) > 255):
        values = values / 257.0
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # same value in every channel: RGB == BGR


def _decode_cv2(data: bytes, image_format: str) -> Optional[np.ndarray]:
    """The cv2 fast path; None when the PIL path must decide."""
    if data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] != b"\xff\xd9":  # JPEG without EOI
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image_format == "RGB" else image


def read_image_uint8(file_name: str, image_format: str = "RGB") -> np.ndarray:
    """Reads an image as uint8 (H, W, 3) in `image_format` ("RGB" or "BGR") channel order.

    EXIF orientation is applied; grayscale, palette, RGBA (alpha dropped), CMYK, 16-bit and float images
    are converted. Any failure to decode raises BadImageError naming the file and the cause.
    """
    try:
        with open(file_name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(f"{file_name}: {type(e).__name__}: {e}") from e
    if not data:
        raise BadImageError(f"{file_name}: empty file (0 bytes)")
    image = _decode_cv2(data, image_format)
    if image is not None:
        return image
    try:
        with Image.open(file_name) as probe:
            high_bit = probe.mode in _HIGH_BIT_MODES
            if high_bit:
                probe.load()
                return _high_bit_to_uint8(probe, image_format)
        image = detection_utils.read_image(file_name, format=image_format)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        raise BadImageError(f"{file_name}: {type(e).__name__}: {e}") from e
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise BadImageError(f"{file_name}: decoded to an unusable array of shape {image.shape}")
    return np.ascontiguousarray(image)
