"""Every refused request gets its answer, also from a client that writes its whole body
before it reads (Python's urllib, as requests does): the service reads and discards the
rest of a refused body (bounded) before it answers, instead of closing a socket with
unread bytes in it, which resets the connection under the answer."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

NAME = "tiny-fashion-mnist"
BODY_BYTES = 24 * 1024 * 1024  # far more than the socket buffers hold
MULTIPART = {"Content-Type": "multipart/form-data; boundary=x"}
FILE_PART = (
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def post(url: str, data, headers: dict[str, str]) -> tuple[int, dict, dict]:
    """Status, JSON body and headers of the answer, as urllib's write-then-read sees it."""
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_an_over_limit_upload_gets_its_413(start_server):
    url = start_server(max_upload_bytes=100_000)
    status, body, _ = post(f"{url}/classify", FILE_PART + b"x" * BODY_BYTES, MULTIPART)
    assert status == 413 and body["error"]["code"] == "too_large", body


def test_a_chunked_upload_past_the_limit_gets_its_413(start_server):
    url = start_server(max_upload_bytes=100_000)

    def chunks():
        yield FILE_PART
        for _ in range(BODY_BYTES // 65536):
            yield b"x" * 65536

    headers = {**MULTIPART, "Transfer-Encoding": "chunked"}
    status, body, _ = post(f"{url}/classify", chunks(), headers)
    assert status == 413 and body["error"]["code"] == "too_large", body


def test_an_over_limit_v2_body_gets_its_413(start_server):
    url = start_server()
    status, body, _ = post(f"{url}/v2/models/{NAME}/infer", b"[" * BODY_BYTES, {})
    assert status == 413 and "exceeds the limit" in body["error"], body


def test_a_body_past_the_drain_bound_is_answered_then_closed(start_server):
    """Past reject_drain_bytes the service stops reading: a client that reads early (as
    curl does) gets the 413 and ``Connection: close``."""
    url = start_server(max_upload_bytes=100_000, reject_drain_bytes=1_000_000)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY_BYTES}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n"
        )
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer, sent, deadline = b"", 0, time.monotonic() + 30
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                sent += sock.send(b"x" * 65536)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer[:200]
    assert b"connection: close" in rest.lower()
    assert sent < BODY_BYTES


@pytest.mark.parametrize("path", ["/classify", f"/v2/models/{NAME}/infer"])
def test_a_refusal_before_the_body_is_read_gets_its_answer(start_server, tmp_path, path):
    """Not ready (no model): the 503 comes before the body (under the upload limit) is
    read, and still arrives."""
    url = start_server(model_dir=tmp_path / "missing", wait=False)
    status, body, _ = post(f"{url}{path}", b"x" * 8_000_000, {"Content-Type": "x/y"})
    assert status == 503, body
    assert "no manifest" in (body["error"] if path.startswith("/v2") else body["error"]["message"])
