"""Property-based tests (Hypothesis) of upload decoding and preprocessing in
``service/imaging.py``: whatever the bytes, the answer is a model-sized array in [0, 1] or an
``APIError`` with a 4xx status, never another exception; valid images keep their content.

Example counts come from the Hypothesis profile (conftest.py): ``ci`` in ``make test``,
``fuzz`` in ``make fuzz``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from service.errors import APIError
from service.imaging import ORIENTATION_TRANSPOSE, decode_image, encode_png

MODEL_SIZE = (28, 28)  # (width, height)
LIMITS = {"max_bytes": 1 << 20, "max_pixels": 1 << 20}
REFUSALS = {400: {"empty_upload", "not_an_image", "corrupt_image"}, 413: {"too_large",
            "too_many_pixels"}, 415: {"unsupported_format"}}  # fmt: skip

# (format, modes it can store, save options)
FORMATS = [
    ("PNG", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], {}),
    ("JPEG", ["L", "RGB", "CMYK"], {"quality": 90}),
    ("WEBP", ["RGB", "RGBA"], {"quality": 90}),
    ("BMP", ["1", "L", "P", "RGB"], {}),
    ("GIF", ["L", "P"], {}),
]


def save(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def decode(data: bytes, channels: int = 1, **limits):
    return decode_image(data, channels=channels, size=MODEL_SIZE, **(LIMITS | limits))


def assert_model_input(pixels: np.ndarray, channels: int) -> None:
    assert pixels.shape == (channels, MODEL_SIZE[1], MODEL_SIZE[0])
    assert pixels.dtype == np.float32
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def assert_refusal(error: APIError) -> None:
    assert error.code in REFUSALS.get(error.status, set()), (error.status, error.code)
    assert error.message


@st.composite
def images(draw, max_side: int = 64) -> tuple[Image.Image, str, dict, int]:
    """A random image in a mode its format can store, with random pixels, and sometimes an
    EXIF block: (image, format, save options, EXIF orientation)."""
    format, modes, options = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(modes))
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        array = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if bands == 1 else array, "L" if bands == 1 else None)
        image = image.convert(mode) if image.mode != mode else image
    if mode == "P" and draw(st.booleans()):
        options = {**options, "transparency": 0}
    orientation = 1
    if format in ("PNG", "JPEG", "WEBP") and draw(st.booleans()):
        orientation = draw(st.integers(1, 8))
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x011A] = draw(st.fractions(0, 1000, max_denominator=1000))  # XResolution
        exif[0x010E] = draw(st.text(max_size=40))  # ImageDescription
        options = {**options, "exif": exif.tobytes()}
    return image, format, options, orientation


@given(images(), st.sampled_from([1, 3]))
def test_valid_images_become_model_input(drawn, channels: int) -> None:
    image, format, options, orientation = drawn
    data = save(image, format, **options)
    decoded = decode(data, channels)
    assert_model_input(decoded.pixels, channels)
    width, height = image.size
    assert decoded.original_size == ((height, width) if orientation >= 5 else (width, height))
    assert decoded.format == format
    if channels == 3 and image.mode in ("1", "L", "I;16", "LA"):
        assert np.array_equal(decoded.pixels[0], decoded.pixels[1])
        assert np.array_equal(decoded.pixels[1], decoded.pixels[2])


@given(st.integers(0, 255), st.integers(1, 200), st.integers(1, 200))
def test_a_uniform_image_keeps_its_value(value: int, width: int, height: int) -> None:
    """Resizing and scaling never invent content: a flat grey stays that grey."""
    data = save(Image.new("L", (width, height), value), "PNG")
    pixels = decode(data).pixels
    assert np.allclose(pixels, value / 255.0, atol=1e-6)


@given(st.integers(0, 65535))
def test_sixteen_bit_values_are_scaled_not_clipped(value: int) -> None:
    data = save(Image.new("I;16", MODEL_SIZE, value), "PNG")
    pixels = decode(data).pixels
    assert np.allclose(pixels, round(value / 65535 * 255) / 255, atol=1.5 / 255)


@given(st.sampled_from(sorted(ORIENTATION_TRANSPOSE)), st.integers(0, 2**32 - 1))
def test_exif_orientation_turns_the_pixels_upright(orientation: int, seed: int) -> None:
    stored = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(stored, "L"), "PNG", exif=exif.tobytes())
    upright = Image.fromarray(stored, "L").transpose(ORIENTATION_TRANSPOSE[orientation])
    assert np.array_equal(np.rint(decode(data).pixels[0] * 255), np.asarray(upright))


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_or_decoded(data: bytes) -> None:
    try:
        decoded = decode(data)
    except APIError as error:
        assert_refusal(error)
    else:
        assert_model_input(decoded.pixels, 1)


@st.composite
def damaged_images(draw) -> bytes:
    """A valid small image with random bytes overwritten, cut out or inserted."""
    image, format, options, _ = draw(images(max_side=24))
    data = bytearray(save(image, format, **options))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["overwrite", "delete", "insert", "truncate"]))
        if action == "overwrite":
            data[position] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@given(damaged_images())
def test_damaged_images_are_refused_or_decoded(data: bytes) -> None:
    try:
        decoded = decode(data)
    except APIError as error:
        assert_refusal(error)
    else:
        assert_model_input(decoded.pixels, 1)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def exif_blocks(draw) -> bytes:
    """A valid EXIF block (orientation, a rational, text) with random bytes overwritten."""
    exif = Image.Exif()
    exif[0x0112] = draw(st.integers(0, 9))
    exif[0x011A] = draw(st.fractions(0, 1000, max_denominator=1000))
    exif[0x010E] = draw(st.text(max_size=20))
    block = bytearray(exif.tobytes())
    for _ in range(draw(st.integers(0, 8))):
        block[draw(st.integers(0, len(block) - 1))] = draw(st.integers(0, 255))
    return bytes(block)


@given(exif_blocks(), st.integers(0, 2**32 - 1))
def test_any_exif_leaves_a_valid_image_decodable(exif: bytes, seed: int) -> None:
    """EXIF is metadata the uploader controls: whatever it holds, valid pixels are served."""
    stored = np.random.default_rng(seed).integers(0, 256, (20, 30), dtype=np.uint8)
    png = save(Image.fromarray(stored, "L"), "PNG")
    data = png[:33] + png_chunk(b"eXIf", exif) + png[33:]  # right after IHDR
    decoded = decode(data)
    assert_model_input(decoded.pixels, 1)
    assert decoded.original_size in ((30, 20), (20, 30))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


@given(st.integers(1, 1 << 20), st.integers(1, 1 << 20))
def test_pixel_limit_is_enforced_from_the_header(width: int, height: int) -> None:
    max_pixels = 10_000
    assume(width * height > max_pixels)
    with pytest.raises(APIError) as caught:
        decode(png_header(width, height), max_pixels=max_pixels)
    assert (caught.value.status, caught.value.code) == (413, "too_many_pixels")


@given(st.binary(min_size=2, max_size=512))
def test_byte_limit_is_enforced_first(data: bytes) -> None:
    with pytest.raises(APIError) as caught:
        decode(data, max_bytes=len(data) - 1)
    assert (caught.value.status, caught.value.code) == (413, "too_large")


@given(
    st.sampled_from([1, 3]),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
def test_encode_png_round_trips(channels: int, height: int, width: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)
    image = Image.open(io.BytesIO(encode_png(pixels)))
    assert image.size == (width, height) and image.mode == ("L" if channels == 1 else "RGB")
    stored = np.asarray(image, np.float32).reshape(height, width, channels).transpose(2, 0, 1)
    assert np.abs(stored / 255.0 - pixels).max() <= 0.5 / 255 + 1e-6


@given(st.integers(1, 64), st.integers(1, 64))
def test_encode_png_resizes_to_the_requested_size(width: int, height: int) -> None:
    pixels = np.full((1, 28, 28), 0.5, np.float32)
    assert Image.open(io.BytesIO(encode_png(pixels, (width, height)))).size == (width, height)
