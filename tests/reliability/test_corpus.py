"""The hostile-input corpus (tests/data/make_corpus.py) against a real ``python -m service``
under uvicorn on 127.0.0.1, with the production limits (10 MiB uploads, 40 Mpx).

Every case gets its documented status and, for a refusal, the JSON error body; after every
case the process is still running and answers a valid image exactly as before the corpus.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from make_corpus import BOMB_SIDE, FILE_CASES, REQUEST_CASES, Case, RequestCase, main, valid_png
from PIL import Image
from reliability_helpers import ServiceProcess, assert_json_error, assert_same_answer, classify

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the service's default and compose's setting
FRAMING_BYTES = 64 * 1024  # service.app.UPLOAD_OVERHEAD_BYTES


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = ServiceProcess(tiny_model_dir, tmp_path_factory.mktemp("corpus-service"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def baseline(client: httpx.Client) -> dict:
    """The answer to a valid image before any hostile input."""
    response = classify(client, valid_png())
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def still_serving(service: ServiceProcess, client: httpx.Client, baseline: dict) -> Iterator[None]:
    """After the test: the process is alive and answers a valid image as before."""
    yield
    service.assert_running()
    assert_same_answer(classify(client, valid_png()), baseline)


def assert_classified(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["label"] == body["top_k"][0]["label"]
    assert 0.0 <= body["confidence"] <= 1.0
    confidences = [p["confidence"] for p in body["top_k"]]
    assert confidences == sorted(confidences, reverse=True)


def assert_purified(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (28, 28) and image.format == "PNG"


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("endpoint", ["/classify", "/purify"])
@pytest.mark.parametrize("case", FILE_CASES, ids=lambda case: case.name)
def test_file_case(client: httpx.Client, case: Case, endpoint: str) -> None:
    data = case.build()
    response = client.post(endpoint, files={"file": (case.name, data, case.media_type)})
    if case.status != 200:
        assert_json_error(response, case.status, case.code)
    elif endpoint == "/classify":
        assert_classified(response)
    else:
        assert_purified(response)


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = "corpus-boundary") -> bytes:
    """A multipart/form-data body of (field, filename, content) file parts."""
    body = b""
    for field, filename, content in parts:
        body += (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


MULTIPART = {"content-type": "multipart/form-data; boundary=corpus-boundary"}


def raw_request(port: int, head: bytes, timeout: float = 10.0) -> httpx.Response:
    """Sends ``head`` (request line and headers, no body) on a fresh connection and reads the
    answer: a server that waited for the declared body would time out here."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {received!r}"
            received += chunk
        head_bytes, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
        length = int(dict((k.lower(), v) for k, v in headers)["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside the response body"
            body += chunk
    return httpx.Response(int(status_line.split(" ", 2)[1]), headers=headers, content=body)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", REQUEST_CASES, ids=lambda case: case.name)
def test_request_case(
    service: ServiceProcess, client: httpx.Client, case: RequestCase, baseline: dict
) -> None:
    image = valid_png()
    if case.name == "wrong-field-name":
        response = client.post("/classify", files={"image": ("x.png", image, "image/png")})
    elif case.name == "two-files":
        files = [("file", ("a.png", image, "image/png")), ("file", ("b.png", image, "image/png"))]
        response = client.post("/classify", files=files)
    elif case.name == "empty-form":
        response = client.post("/classify", content=multipart([]), headers=MULTIPART)
    elif case.name == "no-boundary":
        body = multipart([("file", "x.png", image)])
        response = client.post(
            "/classify", content=body, headers={"content-type": "multipart/form-data"}
        )
    elif case.name == "raw-body":
        response = client.post("/classify", content=image, headers={"content-type": "image/png"})
        assert_same_answer(response, baseline)
        return
    elif case.name == "json-body":
        response = client.post("/classify", json={"file": "x.png"})
    elif case.name == "declared-over-limit":
        head = (
            "POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=corpus-boundary\r\n"
            f"Content-Length: {1024**3}\r\nConnection: close\r\n\r\n"
        ).encode()
        response = raw_request(service.port, head)
    elif case.name == "chunked-over-limit":
        sent = 0
        total = 3 * MAX_UPLOAD_BYTES

        def stream() -> Iterator[bytes]:
            nonlocal sent
            # the part's headers, then zeros as its content, then the closing boundary
            yield multipart([("file", "big.png", b"")]).split(b"\r\n--corpus-boundary--")[0]
            chunk = b"\0" * 65536
            while sent < total:
                sent += len(chunk)
                yield chunk
            yield b"\r\n--corpus-boundary--\r\n"

        response = client.post("/classify", content=stream(), headers=MULTIPART)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        limit = MAX_UPLOAD_BYTES + FRAMING_BYTES
        assert str(limit) in response.json()["error"]["message"]
    else:
        raise AssertionError(f"no request built for case {case.name}")
    assert_json_error(response, case.status, case.code)


def test_chunked_upload_under_the_limit_is_classified(client: httpx.Client, baseline: dict) -> None:
    """No Content-Length is no reason to refuse: a chunked upload of a valid image is
    answered like any other."""
    body = multipart([("file", "x.png", valid_png())])

    def stream() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = client.post("/classify", content=stream(), headers=MULTIPART)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_same_answer(response, baseline)


def test_corpus_writes_its_files_and_expectations(tmp_path: Path) -> None:
    """``python tests/data/make_corpus.py OUT`` (the CLI) writes what the tests send."""

    assert main([str(tmp_path)]) == 0
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert set(expected) == {c.name for c in FILE_CASES} | {c.name for c in REQUEST_CASES}
    for case in FILE_CASES:
        assert (tmp_path / case.name).read_bytes() == case.build(), case.name
    # the bomb: its header claims 400 Mpx, its file is small (read without decoding)
    bomb = (tmp_path / "bomb.png").read_bytes()
    width, height = struct.unpack(">II", bomb[16:24])
    assert width * height == BOMB_SIDE**2 >= 400_000_000 and len(bomb) < 100_000


def test_security_doc_lists_every_case_with_its_status() -> None:
    """docs/security.md's corpus table says what the tests check, case by case."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), cells[2].strip("`") or None)
    for case in (*FILE_CASES, *REQUEST_CASES):
        assert rows.get(case.name) == (case.status, case.code), case.name
