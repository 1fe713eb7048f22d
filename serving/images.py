"""Decode untrusted image bytes into the encoder's input geometry, with limits."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mec_core.data import square_crop

MAX_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000  # also the decompression-bomb guard: checked before decoding


class BadRequest(ValueError):
    """The request cannot be answered as sent; the message says why (a 4xx for the client)."""


class BadImage(BadRequest):
    """One of the request's images cannot be used."""


def decode(data: bytes, channels: int, size: int, max_bytes: int = MAX_BYTES,
           max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """JPEG/PNG/... bytes -> uint8 (channels, size, size): shorter side resized to `size`,
    centre-cropped, converted to grayscale or RGB as the encoder was trained."""
    if not data:
        raise BadImage("empty image")
    if len(data) > max_bytes:
        raise BadImage(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:  # read from the header, before any pixel is decoded
                raise BadImage(f"image is {w}x{h} pixels, over the limit of {max_pixels}")
            img.load()
            array = square_crop(img.convert("L" if channels == 1 else "RGB"), size)
    except UnidentifiedImageError:
        raise BadImage("not an image in a known format (JPEG, PNG, ...)") from None
    except Image.DecompressionBombError:
        raise BadImage(f"image has more than {max_pixels} pixels") from None
    except (OSError, ValueError) as exc:
        raise BadImage(f"image data is truncated or corrupt ({exc})") from None
    array = array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    return torch.from_numpy(array.copy())
