"""The hostile-input corpus: uploads a public endpoint must survive, each with the answer the
service gives and why.

Nothing here is committed as a binary: every file is generated (deterministically) by the
functions below, at test time into a temp dir, or on demand with

    python tests/data/make_corpus.py OUT_DIR

which writes the files and ``expected.json`` (name -> status, error code, reason). The
decompression bomb is a complete, valid PNG of 20000 x 20000 pixels (400 megapixels) that
compresses to under 50 KB; a decoder that trusted it would allocate 400 MB.

``FILE_CASES`` are files sent as the ``file`` field of a well-formed multipart form;
``REQUEST_CASES`` are malformed requests (wrong field, two files, empty form, a body over the
limit with and without a declared length) that the tests build from these descriptions.
"""

from __future__ import annotations

import functools
import io
import json
import random
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

BOMB_SIDE = 20_000  # 400 megapixels, ten times the service's default max_pixels


@dataclass(frozen=True)
class Case:
    name: str  # also the upload's filename
    build: Callable[[], bytes]
    status: int
    code: str | None  # the error code; None for a 200
    why: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True)
class RequestCase:
    name: str
    status: int
    code: str | None  # None: answered (200)
    why: str


def _save(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def _noise(size: tuple[int, int] = (64, 64), mode: str = "L") -> Image.Image:
    """Deterministic noise (Pillow's effect_noise is not seeded)."""
    rng = random.Random(size[0] * 7919 + size[1])
    grey = Image.frombytes("L", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1])))
    return grey.convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (signature 8 bytes + IHDR 25 bytes)."""
    return png[:33] + _png_chunk(kind, data) + png[33:]


def valid_png() -> bytes:
    """A 28 x 28 grey image: the request every test sends to check the service still works."""
    image = Image.new("L", (28, 28), 0)
    image.paste(255, (8, 4, 20, 24))  # a bright bar, roughly a garment's silhouette
    return _save(image, "PNG")


@functools.cache
def decompression_bomb() -> bytes:
    """A valid 1-bit PNG of BOMB_SIDE x BOMB_SIDE black pixels, compressed row by row so
    that making it never holds the image in memory."""
    row = b"\x00" + b"\x00" * ((BOMB_SIDE + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(BOMB_SIDE)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    data = _save(_noise(), "PNG")
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = _save(_noise(mode="RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def sixteen_bit_png() -> bytes:
    return _save(Image.new("I;16", (28, 28), 40_000), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(_noise(mode="CMYK"), "JPEG")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (28, 28), 0)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    image.paste(1, (6, 6, 22, 22))
    return _save(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("L", (28, 28), shade) for shade in (40, 120, 200)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    pages = [Image.new("L", (28, 28), shade) for shade in (40, 120, 200)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def svg() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
        b'<rect x="8" y="4" width="12" height="20" fill="white"/></svg>\n'
    )


def huge_exif_jpeg() -> bytes:
    """JPEG's EXIF lives in one APP1 segment (at most 64 KiB): fill it, orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    exif[0x010E] = "A" * 60_000  # ImageDescription
    return _save(_noise((40, 20), "RGB"), "JPEG", exif=exif.tobytes())


@functools.cache
def huge_exif_png() -> bytes:
    """PNG's eXIf chunk has no such cap: 5 MB of EXIF around a 64 x 64 image."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "A" * 5_000_000
    return _save(_noise(), "PNG", exif=exif.tobytes())


def garbage_exif_png() -> bytes:
    """A well-formed PNG whose eXIf chunk is random bytes (the pixels are fine)."""
    rng = random.Random(9)
    garbage = b"MM\x00*\x00\x00\x00\x08" + bytes(rng.randrange(256) for _ in range(4096))
    return _png_with_chunk(_save(_noise(), "PNG"), b"eXIf", garbage)


@functools.cache
def text_chunk_bomb() -> bytes:
    """A zTXt chunk that inflates to 50 MB (metadata, not pixels)."""
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9)
    return _png_with_chunk(_save(_noise(), "PNG"), b"zTXt", payload)


FILE_CASES: tuple[Case, ...] = (
    Case("empty.png", lambda: b"", 400, "empty_upload", "zero bytes"),
    Case(
        "random.bin",
        lambda: bytes(random.Random(1).randrange(256) for _ in range(4096)),
        400,
        "not_an_image",
        "4 KiB of random bytes",
    ),
    Case(
        "text.png",
        lambda: b"This is a text file with an image extension.\n" * 20,
        400,
        "not_an_image",
        "text named .png and sent as image/png: the content decides, not the name or type",
        "image/png",
    ),
    Case("truncated.png", truncated_png, 400, "corrupt_image", "first half of a PNG"),
    Case("truncated.jpg", truncated_jpeg, 400, "corrupt_image", "first half of a JPEG"),
    Case(
        "bomb.png",
        decompression_bomb,
        413,
        "too_many_pixels",
        f"valid PNG of {BOMB_SIDE}x{BOMB_SIDE} (400 Mpx) in under 50 KB: refused from its header, "
        "before any pixel is decoded",
        "image/png",
    ),
    Case(
        "text-chunk-bomb.png",
        text_chunk_bomb,
        400,
        "corrupt_image",
        "zTXt metadata inflating to 50 MB: Pillow refuses chunks over MAX_TEXT_CHUNK",
        "image/png",
    ),
    Case(
        "one-pixel.png",
        lambda: _save(Image.new("L", (1, 1), 200), "PNG"),
        200,
        None,
        "1x1 is a valid image: upscaled to the model's size",
        "image/png",
    ),
    Case(
        "wide.png",
        lambda: _save(Image.new("L", (20_000, 1), 200), "PNG"),
        200,
        None,
        "20000x1 (20 kpx, under max_pixels): resized, aspect ratio not preserved",
        "image/png",
    ),
    Case(
        "sixteen-bit.png",
        sixteen_bit_png,
        200,
        None,
        "16-bit grey: scaled to 8 bits, not clipped",
        "image/png",
    ),
    Case("cmyk.jpg", cmyk_jpeg, 200, None, "CMYK JPEG: converted", "image/jpeg"),
    Case(
        "palette-transparent.png",
        palette_with_transparency,
        200,
        None,
        "palette with a transparent index: transparent pixels become black",
        "image/png",
    ),
    Case("animated.gif", animated_gif, 200, None, "animated GIF: the first frame", "image/gif"),
    Case(
        "multipage.tiff",
        multipage_tiff,
        415,
        "unsupported_format",
        "TIFF is not an accepted format (PNG, JPEG, WebP, BMP, GIF)",
        "image/tiff",
    ),
    Case(
        "image.svg",
        svg,
        400,
        "not_an_image",
        "SVG is XML, not a raster image; Pillow does not identify it",
        "image/svg+xml",
    ),
    Case(
        "huge-exif.jpg",
        huge_exif_jpeg,
        200,
        None,
        "64 KiB APP1 EXIF with orientation 6: the image is rotated, the rest ignored",
        "image/jpeg",
    ),
    Case(
        "huge-exif.png",
        huge_exif_png,
        200,
        None,
        "5 MB eXIf chunk (under the upload limit): parsed for the orientation only",
        "image/png",
    ),
    Case(
        "garbage-exif.png",
        garbage_exif_png,
        200,
        None,
        "unparseable EXIF is ignored: the pixels are used as stored",
        "image/png",
    ),
)

REQUEST_CASES: tuple[RequestCase, ...] = (
    RequestCase(
        "wrong-field-name", 422, "invalid_parameters", "the image in field 'image', not 'file'"
    ),
    RequestCase(
        "two-files", 422, "invalid_parameters", "two files in 'file': refused, not one dropped"
    ),
    RequestCase("empty-form", 422, "invalid_parameters", "a multipart form with no parts"),
    RequestCase("no-boundary", 400, "bad_request", "multipart/form-data without a boundary"),
    RequestCase(
        "raw-body", 200, None, "the image itself as the body (image/png): answered like the form"
    ),
    RequestCase(
        "json-body", 415, "unsupported_media_type", "a JSON body: neither a form nor an image"
    ),
    RequestCase(
        "declared-over-limit",
        413,
        "too_large",
        "Content-Length over the limit: refused before a byte of the body is read",
    ),
    RequestCase(
        "chunked-over-limit",
        413,
        "too_large",
        "chunked, no Content-Length, streaming past the limit: refused when it crosses it",
    ),
)


def write_corpus(out: Path) -> dict[str, dict]:
    """Writes every file case into ``out`` and ``expected.json``; returns the expectations."""
    out.mkdir(parents=True, exist_ok=True)
    expected = {}
    for case in FILE_CASES:
        (out / case.name).write_bytes(case.build())
        expected[case.name] = {"status": case.status, "code": case.code, "why": case.why}
    for case in REQUEST_CASES:
        expected[case.name] = {"status": case.status, "code": case.code, "why": case.why}
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/data/make_corpus.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    expected = write_corpus(out)
    print(f"wrote {len(FILE_CASES)} files and expected.json ({len(expected)} cases) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
