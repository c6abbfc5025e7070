"""Health and readiness: a missing or corrupt model keeps the service up and not ready."""

from __future__ import annotations

import json
from pathlib import Path

from service_helpers import wait_settled


def test_ready_service(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["providers"] == {
        "purifier": "CPUExecutionProvider",
        "classifier": "CPUExecutionProvider",
    }


def assert_not_ready(client, reason: str) -> None:
    response = wait_settled(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    error = response.json()["error"]
    assert error["code"] == "not_ready" and reason in error["message"], error
    # alive, refusing work with the same reason, and saying so in /metrics
    assert client.get("/healthz").status_code == 200
    refused = client.post("/classify", files={"file": ("x.png", b"\x89PNG")})
    assert refused.status_code == 503 and reason in refused.json()["error"]["message"]
    assert client.get("/v2/health/ready").status_code == 503
    assert "spikeguard_ready 0.0" in client.get("/metrics").text


def test_corrupt_model_file(make_client, model_dir_copy: Path):
    graph = model_dir_copy / "classifier.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    client = make_client(wait=False, model_dir=model_dir_copy)
    assert_not_ready(client, "corrupt")


def test_missing_model_dir(make_client, tmp_path: Path):
    client = make_client(wait=False, model_dir=tmp_path / "nothing-here")
    assert_not_ready(client, "no manifest")


def test_missing_graph_file(make_client, model_dir_copy: Path):
    (model_dir_copy / "purifier.onnx").unlink()
    client = make_client(wait=False, model_dir=model_dir_copy)
    assert_not_ready(client, "missing")


def test_graph_that_is_not_onnx(make_client, model_dir_copy: Path):
    """A file whose sha256 matches the manifest but that ORT cannot load."""
    import hashlib

    garbage = b"not an onnx graph"
    (model_dir_copy / "purifier.onnx").write_bytes(garbage)
    manifest = json.loads((model_dir_copy / "manifest.json").read_text())
    manifest["files"]["purifier"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    (model_dir_copy / "manifest.json").write_text(json.dumps(manifest))
    client = make_client(wait=False, model_dir=model_dir_copy)
    assert_not_ready(client, "cannot load")


def test_unsupported_manifest_version(make_client, model_dir_copy: Path):
    manifest = json.loads((model_dir_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (model_dir_copy / "manifest.json").write_text(json.dumps(manifest))
    client = make_client(wait=False, model_dir=model_dir_copy)
    assert_not_ready(client, "format_version")
