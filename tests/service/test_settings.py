"""Production defaults: the API docs are a setting, the upload pixel limit follows from the
model's input size."""

from __future__ import annotations

import pytest
from test_errors import assert_error, png_header_only, upload

from service.config import default_max_pixels


def test_docs_are_a_setting(make_client):
    docs = make_client()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert docs.get(path).status_code == 200, path
    hidden = make_client(docs=False)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert hidden.get(path).status_code == 404, path
    assert hidden.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("height", "width", "limit"),
    [
        (28, 28, 28 * 28 * 128 * 128),  # 12.8 Mpx: a 4032x3024 phone photo fits
        (224, 224, 40_000_000),  # capped
        (4, 4, 4_000_000),  # floor
    ],
)
def test_the_pixel_limit_follows_from_the_input_size(height, width, limit):
    assert default_max_pixels(height, width) == limit


def test_the_served_model_sets_the_pixel_limit(client):
    """28x28: 12 845 056 pixels. A header just over that is refused before decoding; a
    photo-sized one just under it is decoded (and, having no pixel data, is corrupt)."""
    over = upload(client, png_header_only(3585, 3584))
    assert_error(over, 413, "too_many_pixels", "limit of 12845056")
    under = upload(client, png_header_only(4032, 3024))
    assert under.status_code == 400, under.text
