"""Every kind of bad input gets its status and the JSON error shape, never a 500."""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image
from service_helpers import png_bytes


def assert_error(response, status: int, code: str, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert mentions.lower() in body["error"]["message"].lower(), body
    return body


def upload(client, data: bytes, path: str = "/classify", **params):
    return client.post(path, files={"file": ("upload", data)}, params=params)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with almost no pixel data: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("path", ["/classify", "/purify"])
def test_not_an_image(client, path):
    assert_error(upload(client, b"hello, I am text", path), 400, "not_an_image")


def test_empty_upload(client):
    assert_error(upload(client, b""), 400, "empty_upload")


def test_truncated_image(client):
    big = png_bytes(Image.effect_noise((64, 64), 50).convert("L"))
    assert_error(upload(client, big[: len(big) // 2]), 400, "corrupt_image")


def test_unsupported_format(client):
    tiff = png_bytes(Image.new("L", (28, 28), 128), "TIFF")
    assert_error(upload(client, tiff), 415, "unsupported_format", "TIFF")


def test_too_many_bytes(make_client, fashion_png):
    client = make_client(max_upload_bytes=len(fashion_png) - 1)
    assert_error(upload(client, fashion_png), 413, "too_large", "bytes")


def test_declared_body_over_the_limit_is_refused_before_reading(make_client):
    client = make_client(max_upload_bytes=1000)
    response = client.post(
        "/classify", content=b"x" * 100_000, headers={"content-type": "multipart/form-data"}
    )
    assert_error(response, 413, "too_large")


def test_too_many_pixels(make_client):
    client = make_client(max_pixels=50 * 50)
    assert_error(upload(client, png_bytes(Image.new("L", (51, 50)))), 413, "too_many_pixels")


def test_decompression_bomb_is_refused_before_decoding(client):
    """100k x 100k would be 10 GB of pixels; the header alone is enough to refuse it."""
    assert_error(upload(client, png_header_only(100_000, 100_000)), 413, "too_many_pixels")


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": "many"}, "top_k"),
        ({"purify": "perhaps"}, "purify"),
    ],
)
def test_bad_query_parameters(client, fashion_png, params, mentions):
    assert_error(upload(client, fashion_png, **params), 422, "invalid_parameters", mentions)


def test_bad_purify_size(client, fashion_png):
    response = upload(client, fashion_png, "/purify", size="huge")
    assert_error(response, 422, "invalid_parameters", "size")


def test_missing_file_field(client, fashion_png):
    response = client.post("/classify", files={"image": ("x.png", fashion_png)})
    body = assert_error(response, 422, "invalid_parameters", "file")
    assert "image" in body["error"]["message"]  # names the field it got instead


def test_a_text_value_in_the_file_field(client):
    response = client.post(
        "/classify", files={"other": ("x.png", b"x")}, data={"file": "not a file"}
    )
    assert_error(response, 422, "invalid_parameters", "expected a file")


@pytest.mark.parametrize("path", ["/classify", "/purify"])
def test_several_files_in_the_field_are_refused(client, fashion_png, path):
    files = [("file", ("a.png", fashion_png)), ("file", ("b.png", fashion_png))]
    assert_error(client.post(path, files=files), 422, "invalid_parameters", "exactly one")


@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        ({"json": {"file": "x"}}, "application/json"),
        ({"data": {"file": "x"}}, "application/x-www-form-urlencoded"),
        ({"content": b"\x89PNG", "headers": {"content-type": "text/plain"}}, "text/plain"),
        ({"content": b"\x89PNG"}, "without a content-type"),
    ],
)
def test_a_body_that_is_neither_a_form_nor_an_image(client, kwargs, mentions):
    """415, naming what was sent and the two accepted forms."""
    body = assert_error(client.post("/classify", **kwargs), 415, "unsupported_media_type", mentions)
    assert "multipart/form-data" in body["error"]["message"]
    assert "image/png" in body["error"]["message"]


def test_raw_body_errors_are_the_form_errors(client):
    raw = {"headers": {"content-type": "image/png"}}
    assert_error(client.post("/classify", content=b"", **raw), 400, "empty_upload")
    assert_error(client.post("/classify", content=b"text", **raw), 400, "not_an_image")
    tiff = png_bytes(Image.new("L", (28, 28), 128), "TIFF")
    assert_error(client.post("/purify", content=tiff, **raw), 415, "unsupported_format")


def test_raw_body_over_the_limit(make_client, fashion_png):
    client = make_client(max_upload_bytes=len(fashion_png) - 1)
    response = client.post("/classify", content=fashion_png, headers={"content-type": "image/png"})
    assert_error(response, 413, "too_large", "bytes")


def test_unknown_route_and_method(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/classify"), 405, "method_not_allowed")


def test_rejections_are_counted(client):
    upload(client, b"not an image")
    metrics = client.get("/metrics").text
    assert 'spikeguard_rejected_requests_total{reason="bad_image"} 1.0' in metrics
