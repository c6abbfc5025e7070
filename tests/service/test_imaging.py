"""Decoding uploads: formats, modes, first GIF frame, 16-bit greys, limits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from service_helpers import png_bytes

from service.errors import APIError
from service.imaging import decode_image, encode_png

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 10_000_000}


def decode(data: bytes, channels: int = 1, size=(28, 28)):
    return decode_image(data, channels=channels, size=size, **LIMITS)


def gradient(mode: str = "L", size=(28, 28)) -> Image.Image:
    values = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
    return Image.fromarray(values, "L").convert(mode)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_decode_to_model_input(format):
    image = decode(png_bytes(gradient("RGB"), format))
    assert image.format == format
    assert image.pixels.shape == (1, 28, 28) and image.pixels.dtype == np.float32
    assert image.pixels.min() >= 0 and image.pixels.max() <= 1
    # left to right gradient survives every codec (JPEG/WebP lossy, GIF palette)
    assert image.pixels[0, 14, 0] < 0.1 and image.pixels[0, 14, -1] > 0.9


def test_rgb_model_gets_three_channels_from_grey():
    image = decode(png_bytes(gradient("L")), channels=3, size=(32, 32))
    assert image.pixels.shape == (3, 32, 32)
    np.testing.assert_allclose(image.pixels[0], image.pixels[2])


def test_gif_first_frame():
    frames = [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 255)]
    data = png_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(data).pixels.max() == 0.0


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.full((28, 28), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = png_bytes(Image.fromarray(values))
    assert abs(float(decode(data).pixels.mean()) - 0.5) < 0.01


def test_transparent_pixels_become_background():
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    assert decode(png_bytes(image)).pixels.max() == 0.0


def test_resized_to_model_size_keeps_original_size():
    image = decode(png_bytes(gradient("L", size=(120, 80))))
    assert image.pixels.shape == (1, 28, 28) and image.original_size == (120, 80)


def test_limits_raise_api_errors():
    with pytest.raises(APIError) as error:
        decode_image(
            png_bytes(gradient()), channels=1, size=(28, 28), max_bytes=10, max_pixels=10**6
        )
    assert error.value.status == 413
    with pytest.raises(APIError) as error:
        decode_image(
            png_bytes(gradient()), channels=1, size=(28, 28), max_bytes=10**6, max_pixels=100
        )
    assert error.value.status == 413 and error.value.code == "too_many_pixels"


def test_encode_png_round_trip():
    pixels = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28)
    back = decode(encode_png(pixels)).pixels
    np.testing.assert_allclose(back, pixels, atol=1 / 255)


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpeg_reports_its_real_size(orientation):
    """JPEGs much larger than the model decode at a reduced scale; the size reported
    for ``/purify?size=original`` is still the upload's (turned by EXIF)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png_bytes(gradient("RGB", size=(1200, 800)), "JPEG", exif=exif.tobytes())
    image = decode(data)
    assert image.pixels.shape == (1, 28, 28)
    assert image.original_size == ((1200, 800) if orientation == 1 else (800, 1200))
