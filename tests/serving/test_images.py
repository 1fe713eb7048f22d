"""Decoding untrusted image bytes."""

import io

import pytest
import torch
from PIL import Image

from serving.images import BadImage, decode


def png(width=40, height=30, mode="RGB", colour=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_decode__resizes_crops_and_converts_channels():
    rgb = decode(png(), channels=3, size=16)
    assert rgb.shape == (3, 16, 16) and rgb.dtype == torch.uint8
    assert rgb[0].float().mean() > 250 and rgb[2].float().mean() < 5
    gray = decode(png(), channels=1, size=16)
    assert gray.shape == (1, 16, 16)


@pytest.mark.parametrize("data,message", [
    (b"", "empty image"),
    (b"hello, not an image", "not an image in a known format"),
    (png()[:60], "truncated or corrupt"),
])
def test_decode__bad_bytes_are_refused_with_a_reason(data, message):
    with pytest.raises(BadImage, match=message):
        decode(data, 3, 16)


def test_decode__size_limits_come_before_decoding():
    with pytest.raises(BadImage, match="over the limit of 50"):
        decode(png(), 3, 16, max_bytes=50)
    # a decompression bomb: tiny file, huge canvas; refused from the header alone
    bomb = png(8000, 8000, mode="1", colour=0)
    assert len(bomb) < 50_000
    with pytest.raises(BadImage, match="8000x8000 pixels, over the limit"):
        decode(bomb, 3, 16, max_pixels=10_000_000)
