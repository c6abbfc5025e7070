"""service/forms.py against the general parser (python-multipart through Starlette): the
single-file reader gives exactly the file the general parser gives, or leaves the body to it;
it reads what real clients send; and the service answers every form as before."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from hypothesis import HealthCheck, example, find, given, settings
from hypothesis import strategies as st
from PIL import Image
from service_helpers import png_bytes
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from urllib3 import encode_multipart_formdata

from service.forms import boundary_of, single_file

BCHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "


def general_parser(body: bytes, content_type: bytes):
    """What the service's general path makes of the form: the one file in ``file`` (bytes),
    or a string saying why not (``upload_bytes`` answers 422 / 400 then)."""

    async def parse():
        async def stream():
            yield body

        headers = Headers(raw=[(b"content-type", content_type)])
        try:
            form = await MultiPartParser(headers, stream(), max_files=8, max_fields=64).parse()
        except MultiPartException as exc:
            return f"refused: {exc.message}"
        items = form.getlist("file")
        if len(items) != 1:
            return f"{len(items)} items in file"
        if not isinstance(items[0], UploadFile):
            return "a plain value"
        return await items[0].read()

    return asyncio.run(parse())


def form(
    parts: list[tuple[bytes, list[bytes], bytes]],
    boundary: bytes,
    preamble: bytes = b"",
    closing: bytes = b"--\r\n",
) -> bytes:
    """A multipart body of (disposition, other header lines, content) parts."""
    body = preamble
    for disposition, others, content in parts:
        body += b"--" + boundary + b"\r\n" + b"\r\n".join([disposition, *others])
        body += b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + closing


boundaries = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
CANONICAL_DISPOSITION = b'Content-Disposition: form-data; name="file"; filename="x.png"'
# the layout clients send, most of the time; one of the variations otherwise
dispositions = st.sampled_from(
    [CANONICAL_DISPOSITION] * 10
    + [
        b'content-disposition: form-data; name="file"; filename=""',
        b'CONTENT-DISPOSITION:form-data;name="file";filename="a b.png"',
        b'Content-Disposition: form-data; name="file"',  # a plain value, not a file
        b'Content-Disposition: form-data; name="FILE"; filename="x.png"',
        b'Content-Disposition: form-data; name="other"; filename="x.png"',
        b'Content-Disposition: form-data; filename="x.png"; name="file"',
        b'Content-Disposition: form-data; name=file; filename="x.png"',
        b'Content-Disposition: form-data; name="file"; filename="C:\\\\x.png"',
        b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''x.png",
        b'Content-Disposition: attachment; name="file"; filename="x.png"',
    ]
)
other_headers = st.lists(
    st.sampled_from(
        [b"Content-Type: image/png"] * 6
        + [
            b"content-type:application/octet-stream",
            b"Content-Type: image/png; charset=binary",
            b"Content-Transfer-Encoding: binary",
            b"X-Extra: 1",
            b"not a header",
        ]
    ),
    max_size=2,
)


@st.composite
def contents(draw, boundary: bytes) -> bytes:
    """File contents, some of them holding pieces of the delimiter."""
    pieces = st.sampled_from(
        [b"\r\n", b"--", b"\r\n--", boundary, b"\r\n--" + boundary[:-1], b"\x89PNG", b"\x00"]
    )
    chunks = draw(st.lists(st.one_of(pieces, st.binary(max_size=20)), max_size=8))
    return b"".join(chunks)


@st.composite
def common_forms(draw) -> tuple[bytes, bytes]:
    """The layout clients send (one file part), its boundary, quoting, part type, closing
    and content drawn: what the single-file reader should take."""
    boundary = draw(boundaries).encode()
    quoted = draw(st.booleans()) or b" " in boundary
    value = b'"' + boundary + b'"' if quoted else boundary
    part_type = draw(st.sampled_from([[], [b"Content-Type: image/png"]]))
    closing = draw(st.sampled_from([b"--\r\n", b"--"]))
    body = form(
        [(CANONICAL_DISPOSITION, part_type, draw(contents(boundary)))], boundary, b"", closing
    )
    return body, b"multipart/form-data; boundary=" + value


@st.composite
def varied_forms(draw) -> tuple[bytes, bytes]:
    """Forms of every kind: other headers, parameters, fields, part counts, preambles and
    endings, mostly not what the single-file reader takes."""
    boundary = draw(boundaries).encode()
    quoted = draw(st.booleans()) or b" " in boundary
    value = b'"' + boundary + b'"' if quoted else boundary
    content_type = draw(
        st.sampled_from(
            [b"multipart/form-data; boundary=" + value] * 4
            + [
                b"Multipart/Form-Data;BOUNDARY=" + value,
                b"multipart/form-data; boundary=" + value + b"; charset=utf-8",
                b"multipart/form-data; charset=utf-8; boundary=" + value,
            ]
        )
    )
    parts = draw(
        st.lists(st.tuples(dispositions, other_headers, contents(boundary)), min_size=0, max_size=3)
    )
    preamble = draw(st.sampled_from([b"", b"", b"a preamble\r\n"]))
    closing = draw(st.sampled_from([b"--\r\n", b"--", b"--\r\nepilogue", b"\r\n", b""]))
    return form(parts, boundary, preamble, closing), content_type


forms = st.one_of(common_forms(), varied_forms())


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(forms)
@example(
    (
        form([(b'Content-Disposition: form-data; name="file"; filename="x"', [], b"ab")], b"b"),
        b"multipart/form-data; boundary=b",
    )
)
def test_the_single_file_reader_agrees_with_the_general_parser(case):
    body, content_type = case
    fast = single_file(body, content_type)
    if fast is not None:
        assert general_parser(body, content_type) == fast


def test_the_generated_forms_reach_the_reader_with_delimiter_like_content():
    """The property above is only as good as its forms: some of them are read by the
    single-file reader although the file holds pieces of the delimiter."""

    def tricky(case) -> bool:
        fast = single_file(*case)
        boundary = boundary_of(case[1])
        return fast is not None and boundary is not None and b"\r\n--" + boundary[:-1] in fast

    body, content_type = find(forms, tricky, settings=settings(derandomize=True, database=None))
    assert general_parser(body, content_type) == single_file(body, content_type)


def png_form_from(encoder: str, png: bytes) -> tuple[bytes, bytes]:
    """(body, content type) of a form holding ``png`` in ``file``, as each client builds it."""
    if encoder == "httpx":
        request = httpx.Request("POST", "http://x/", files={"file": ("x.png", png, "image/png")})
        return request.read(), request.headers["content-type"].encode()
    if encoder == "httpx-no-type":
        request = httpx.Request("POST", "http://x/", files={"file": ("upload", png)})
        return request.read(), request.headers["content-type"].encode()
    if encoder == "urllib3":  # requests' encoder
        body, content_type = encode_multipart_formdata({"file": ("x.png", png, "image/png")})
        return body, content_type.encode()
    boundary = {  # curl -F file=@x.png (curl 7.88); a page's FormData from <input type=file>
        "curl": b"------------------------5f6bd0b1a1c3c2a9",
        "chromium": b"----WebKitFormBoundary7MA4YWxkTrZu0gW",
    }.get(encoder)
    if boundary is not None:
        part = (CANONICAL_DISPOSITION, [b"Content-Type: image/png"], png)
        return form([part], boundary), b"multipart/form-data; boundary=" + boundary
    raise AssertionError(encoder)


ENCODERS = ["httpx", "httpx-no-type", "urllib3", "curl", "chromium"]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_what_clients_send_takes_the_single_file_reader(encoder):
    png = png_bytes(Image.effect_noise((28, 28), 60).convert("L"))
    body, content_type = png_form_from(encoder, png)
    assert single_file(body, content_type) == png
    assert general_parser(body, content_type) == png


def test_boundaries():
    assert boundary_of(b"multipart/form-data; boundary=abc") == b"abc"
    assert boundary_of(b'multipart/form-data; boundary="a b"') == b"a b"
    assert boundary_of(b"multipart/form-data; boundary=") is None
    assert boundary_of(b'multipart/form-data; boundary=""') is None
    assert boundary_of(b"multipart/form-data; boundary=" + b"x" * 71) is None
    assert boundary_of(b'multipart/form-data; boundary="a\\"b"') is None
    assert boundary_of(b"multipart/mixed; boundary=abc") is None


@pytest.mark.parametrize(
    "body",
    [
        # two files: 422 from the general parser, as before
        form(
            [(b'Content-Disposition: form-data; name="file"; filename="x.png"', [], b"PNG")] * 2,
            b"b",
        ),
        # the file after a plain field: read by the general parser
        form(
            [
                (b'Content-Disposition: form-data; name="note"', [], b"hello"),
                (b'Content-Disposition: form-data; name="file"; filename="x.png"', [], b"PNG"),
            ],
            b"b",
        ),
    ],
)
def test_other_forms_go_to_the_general_parser(body):
    assert single_file(body, b"multipart/form-data; boundary=b") is None


def test_the_service_answers_forms_either_way(client, fashion_png):
    """The same image in the common layout (single-file reader), after a plain field
    (general parser), chunked (general parser, streaming) and twice (422)."""
    boundary = b"b"
    file_part = (b'Content-Disposition: form-data; name="file"; filename="x.png"', [], fashion_png)
    headers = {"content-type": "multipart/form-data; boundary=b"}
    common = client.post("/classify", content=form([file_part], boundary), headers=headers)
    assert common.status_code == 200, common.text
    note = (b'Content-Disposition: form-data; name="note"', [], b"hello")
    after_field = client.post(
        "/classify", content=form([note, file_part], boundary), headers=headers
    )
    chunked = client.post("/classify", content=iter([form([file_part], boundary)]), headers=headers)
    twice = client.post("/classify", content=form([file_part] * 2, boundary), headers=headers)
    for answer in (after_field, chunked):
        assert answer.status_code == 200, answer.text
        assert answer.json()["spikes"] == common.json()["spikes"]
        assert answer.json()["top_k"] == common.json()["top_k"]
    assert twice.status_code == 422 and "exactly one file" in twice.json()["error"]["message"]


def test_a_large_form_streams_through_the_general_parser(client, monkeypatch):
    """A form past WHOLE_FORM_MAX_BYTES is not buffered whole for the single-file reader:
    the general parser streams it, and the answer is the one the same file gets as the body."""
    from service.routes import uploads

    tried: list[int] = []

    def recording(body: bytes, content_type: bytes) -> bytes | None:
        tried.append(len(body))
        return single_file(body, content_type)

    monkeypatch.setattr(uploads, "single_file", recording)
    small = png_bytes(Image.effect_noise((28, 28), 60).convert("L"))
    bitmap = io.BytesIO()
    Image.effect_noise((640, 640), 90).convert("RGB").save(bitmap, format="BMP")
    large = bitmap.getvalue()
    assert len(large) > uploads.WHOLE_FORM_MAX_BYTES
    for image, expect_tried in ((small, 1), (large, 0)):
        tried.clear()
        as_form = client.post("/classify", files={"file": ("x", image)})
        as_body = client.post("/classify", content=image, headers={"content-type": "image/bmp"})
        assert as_form.status_code == as_body.status_code == 200, as_form.text
        assert as_form.json()["spikes"] == as_body.json()["spikes"]
        assert len(tried) == expect_tried
