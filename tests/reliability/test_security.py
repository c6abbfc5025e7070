"""Security basics: no pickle loading anywhere, no request-controlled path reaching the
filesystem, request bodies bounded before they are buffered or spooled.

The container side (non-root user, read-only root filesystem, restart policy) is asserted
in tests/deploy/test_deploy_static.py, the gateway's security headers in
tests/deploy/test_deploy_stack.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from make_corpus import valid_png
from service_helpers import REPO, wait_ready

from service.app import UPLOAD_OVERHEAD_BYTES, create_app
from service.config import Settings

# --- no pickle -----------------------------------------------------------------------------

# Deserialisers that can run code from the data they load.
UNSAFE_LOADING = re.compile(
    r"""
    \b(?:import|from)\s+(?:c?pickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b
    | \b(?:c?pickle|_pickle|dill|cloudpickle|joblib|marshal)\.(?:loads?|Unpickler)\b
    | \btorch\.load\b | \btorch\.hub\b
    | \ballow_pickle\s*=\s*True\b
    | \bread_pickle\b
    """,
    re.VERBOSE,
)
SKIPPED_DIRS = {
    ".git",
    ".venv",
    ".venv-serve-cpu",
    ".device",  # make device-payload: third-party packages for a GPU machine, not the project
    ".cache",
    "runs",
    "results",
    "build",
    "dist",
    "__pycache__",
}
SCANNED_SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".ipynb"}


def source_files() -> Iterator[Path]:
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(root) / name
            if path.suffix in SCANNED_SUFFIXES or name in {"Makefile", "Dockerfile"}:
                yield path


def unsafe_loading(text: str) -> list[str]:
    return [match.group(0) for match in UNSAFE_LOADING.finditer(text)]


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from joblib import load",
        "state = torch.load(path, weights_only=True)",
        "np.load(f, allow_pickle=True)",
        "obj = cloudpickle.loads(blob)",
        "df = pd.read_pickle(p)",
        "model = torch.hub.load('repo', 'net')",
    ],
)
def test_the_scan_recognises_unsafe_loading(snippet: str) -> None:
    assert unsafe_loading(snippet), snippet


def test_no_pickle_loading_anywhere_in_the_source_tree() -> None:
    """Checkpoints are safetensors, models ONNX, data IDX/PNG; nothing unpickles."""
    this_file = Path(__file__).resolve()
    scanned, found = 0, {}
    for path in source_files():
        if path.resolve() == this_file:
            continue
        scanned += 1
        hits = unsafe_loading(path.read_text(errors="replace"))
        if hits:
            found[str(path.relative_to(REPO))] = hits
    assert scanned > 50, f"only {scanned} files scanned: is the tree where it should be?"
    assert not found, found


# --- no path from a request reaches the filesystem -----------------------------------------

PROBE = "sg-probe"
PAYLOADS = [
    "../../../../../../etc/passwd",
    "/etc/passwd",
    f"..%2f..%2f{PROBE}%2fpasswd",
    f"{PROBE}/../../manifest.json",
    "%2e%2e/%2e%2e/etc/passwd",
    "..\\..\\windows\\win.ini",
]
FILESYSTEM_EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir"}


class FileAccessRecorder:
    """Records the paths of filesystem audit events while ``active`` (the hook itself stays
    installed for the life of the process: audit hooks cannot be removed)."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self._lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active and event in FILESYSTEM_EVENTS and args:
            path = args[0]
            if isinstance(path, bytes | str):
                with self._lock:
                    self.paths.append(
                        path.decode(errors="replace") if isinstance(path, bytes) else path
                    )


@pytest.fixture(scope="module")
def recorder() -> FileAccessRecorder:
    return FileAccessRecorder()


def hostile_requests(client: TestClient, payload: str, model_name: str) -> list[httpx.Response]:
    image = valid_png()
    form = {"model_dir": payload, "path": payload}
    query = {"model_dir": payload, "model": payload, "path": payload, "file": payload}
    headers = {"X-Model-Dir": payload, "X-Original-URL": f"/{payload}"}
    infer = {
        "parameters": {"model_dir": payload, "path": payload},
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "data": [0.5] * 784, "parameters": {"path": payload}}],
    }  # fmt: skip
    responses = [
        client.post(
            endpoint,
            params=query,
            data=form,
            files={"file": (payload, image, "image/png")},
            headers=headers,
        )
        for endpoint in ("/classify", "/purify")
    ]
    for path in (
        f"/v2/models/{payload}",
        f"/v2/models/{payload}/ready",
        f"/v2/models/{model_name}/versions/{payload}",
        f"/samples/{payload}",
        f"/static/{payload}",
        f"/{payload}",
    ):
        responses.append(client.get(path, params=query, headers=headers))
    responses.append(client.post(f"/v2/models/{payload}/infer", json=infer, headers=headers))
    responses.append(client.post(f"/v2/models/{model_name}/infer", json=infer, headers=headers))
    return responses


def test_no_request_path_reaches_the_filesystem(
    recorder: FileAccessRecorder, tiny_model_dir: Path
) -> None:
    """Path-traversal payloads in every place a request can carry text (path, query, form
    field, upload filename, headers, V2 parameters): no filesystem access names any of
    them, and whatever the service opens while answering lies under the model directory
    (from configuration), its own static assets, or the interpreter's installation
    (imports)."""
    settings = Settings(model_dir=tiny_model_dir, intra_op_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client.get)
        model_name = client.get("/readyz").json()["model"]["name"]
        hostile_requests(client, "warm-up", model_name)  # first-use imports happen here
        recorder.paths.clear()
        recorder.active = True
        try:
            responses = [r for p in PAYLOADS for r in hostile_requests(client, p, model_name)]
            (tiny_model_dir / "manifest.json").read_bytes()  # the recorder sees opens
        finally:
            recorder.active = False
    assert str(tiny_model_dir / "manifest.json") in recorder.paths
    for response in responses:
        assert response.status_code < 500, (response.request.url, response.text[:300])
    allowed_roots = [
        tiny_model_dir.resolve(),
        (REPO / "service" / "static").resolve(),
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
    ]
    markers = ("passwd", "win.ini", PROBE, "..")
    for path in recorder.paths:
        assert not any(marker in path for marker in markers), path
        resolved = Path(path).resolve()
        assert any(resolved.is_relative_to(root) for root in allowed_roots), path


def test_the_model_directory_is_a_setting_not_a_parameter() -> None:
    """No operation in the API takes anything that names a file or directory."""
    schema = create_app(Settings()).openapi()
    names = set()
    for operations in schema["paths"].values():
        for operation in operations.values():
            names |= {parameter["name"].lower() for parameter in operation.get("parameters", [])}
    for component in schema["components"]["schemas"].values():
        names |= {name.lower() for name in component.get("properties", {})}
    suspicious = {n for n in names if re.search(r"dir|path|folder|filename|model_dir", n)}
    assert not suspicious, suspicious


# --- bodies bounded before they are buffered or spooled -----------------------------------


@pytest.mark.parametrize("drain", [0, 1 << 20])
def test_a_chunked_body_is_refused_before_it_is_read_past_the_limit(
    drain: int, tiny_model_dir: Path
) -> None:
    """Drives the ASGI app directly with a body of no declared length that never ends:
    the app stops pulling it within one chunk of the limit (plus ``reject_drain_bytes``
    read and discarded so that the client can read the answer) and answers 413 with
    ``Connection: close``."""
    limit = 100_000
    settings = Settings(model_dir=tiny_model_dir, max_upload_bytes=limit, reject_drain_bytes=drain)
    app = create_app(settings)  # a ready service: one that is not refuses before the body
    chunk = b"\0" * 65536
    pulled = 0
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        body = head if pulled == 0 else chunk
        pulled += len(body)
        if pulled > 64 << 20:  # without the limit the app would read on forever
            raise AssertionError("read 64 MiB")
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def serve_one() -> None:
        service = app.state.service
        await service.load()
        assert service.ready, service.reason
        try:
            await app(scope, receive, send)
        finally:
            await service.close()

    asyncio.run(serve_one())

    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    assert start["status"] == 413, body
    assert b'"too_large"' in body
    assert (b"connection", b"close") in start["headers"]
    assert pulled <= limit + UPLOAD_OVERHEAD_BYTES + len(chunk) + drain, pulled
