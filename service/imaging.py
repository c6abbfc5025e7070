"""Upload decoding and validation with Pillow, and PNG encoding of results.

Checks run cheapest first: byte size, then the format and pixel count from the header
(``Image.open`` reads only the header), and only then the pixels. A decompression bomb is
refused before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import APIError

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
EXIF_ORIENTATION = 0x0112
_BYTE_SCALE = np.float32(1.0 / 255.0)
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def limit_pillow_pixels(max_pixels: int) -> None:
    """Pillow's own guard (process-wide): refuse images above twice ``MAX_IMAGE_PIXELS``
    (``DecompressionBombError``), warn above it. ``decode_image`` refuses everything above
    ``max_pixels`` itself, so the warning says nothing new: it is silenced here, once,
    rather than turned into an error per call with ``warnings.catch_warnings``, which is
    not thread-safe and decoding runs in a thread pool."""
    current = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels if current is None else max(current, max_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass
class DecodedImage:
    pixels: np.ndarray  # float32 [C, H, W] in [0, 1] at model resolution
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    format: str


def decode_image(
    data: bytes,
    *,
    channels: int,
    size: tuple[int, int],
    max_bytes: int,
    max_pixels: int,
) -> DecodedImage:
    """Decodes an upload into the model's input. ``size`` is (width, height).

    Raises ``APIError``: 400 empty/not an image/corrupt, 413 too many bytes or pixels,
    415 an image format the service does not accept."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return decode_opened(image, channels=channels, size=size)


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """The upload opened from its header alone (cheap: no pixel is decoded), checked for
    size, format and pixel count; ``decode_opened`` decodes it. Raises as ``decode_image``."""
    if not data:
        raise APIError(400, "empty_upload", "the uploaded file is empty")
    if len(data) > max_bytes:
        raise APIError(
            413, "too_large", f"upload of {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise APIError(400, "not_an_image", "the upload is not a recognisable image") from None
    except Image.DecompressionBombError:
        raise APIError(413, "too_many_pixels", "the image has too many pixels") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise APIError(400, "corrupt_image", f"the image cannot be read: {exc}") from None
    if image.format not in ALLOWED_FORMATS:
        raise APIError(
            415,
            "unsupported_format",
            f"{image.format} images are not accepted; send one of {sorted(ALLOWED_FORMATS)}",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise APIError(
            413,
            "too_many_pixels",
            f"image of {width}x{height} = {width * height} pixels exceeds the limit "
            f"of {max_pixels}",
        )
    if width == 0 or height == 0:
        raise APIError(400, "corrupt_image", f"image has no pixels ({width}x{height})")
    return image


def decode_opened(image: Image.Image, *, channels: int, size: tuple[int, int]) -> DecodedImage:
    """The pixels of an image ``open_image`` accepted, as the model's input."""
    source_format = image.format  # a transposed copy no longer carries it
    width, height = image.size
    try:
        image.seek(0)  # GIF / animated WebP: the first frame
        if image.format == "JPEG":
            # decode at a reduced scale when the upload is much larger than the model
            image.draft("RGB" if channels == 3 else "L", (size[0] * 2, size[1] * 2))
        image.load()
        decoded_size = image.size  # smaller than (width, height) after a JPEG draft
        image = _apply_orientation(image)
        turned = image.size != decoded_size
        original_size = (height, width) if turned else (width, height)
        pixels = _to_array(image, channels, size)
    except APIError:
        raise
    except Image.DecompressionBombError:
        raise APIError(413, "too_many_pixels", "the image has too many pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise APIError(400, "corrupt_image", f"the image cannot be decoded: {exc}") from None
    return DecodedImage(pixels, original_size, source_format)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Turns the pixels upright as the EXIF orientation tag says. EXIF is metadata an
    uploader controls: when it cannot be parsed the pixels are used as stored. (Pillow's
    ``ImageOps.exif_transpose`` also rewrites the EXIF block, which raises on malformed
    tags of every exception type.)"""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # Pillow's EXIF parser raises struct, type, key and value errors alike
        return image
    method = ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become black, the background of the datasets served here."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images (``I;16*``, ``I``, ``F``) scaled to 8 bits; Pillow's
    own ``convert("L")`` clips them instead of scaling."""
    values = np.asarray(image, dtype=np.float32)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _to_array(image: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_8bit(image)
    image = _flatten_alpha(image)
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    # the bytes straight into numpy: half the cost of np.asarray's array interface
    width, height = image.size
    array = np.frombuffer(image.tobytes(), np.uint8).astype(np.float32) * _BYTE_SCALE
    if channels == 1:
        return array.reshape(1, height, width)
    return np.ascontiguousarray(array.reshape(height, width, 3).transpose(2, 0, 1))


def encode_png(pixels: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """``pixels`` float [C, H, W] in [0, 1] -> PNG bytes, resized to ``size`` (w, h) if given."""
    array = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = (
        Image.fromarray(array[0], "L")
        if array.shape[0] == 1
        else Image.fromarray(array.transpose(1, 2, 0), "RGB")
    )
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
