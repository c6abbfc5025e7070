"""The endpoints behind the demo page, in-process: the page and its assets, the samples
listing and images (ids checked against the manifest), and ``/purify?output=noise``."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


def _started(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, intra_op_threads=1, providers="cpu")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def client(demo_model_dir: Path) -> Iterator[TestClient]:
    yield from _started(demo_model_dir)


def test_page_and_assets_are_served_with_a_self_only_policy(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    for path, media_type in [
        ("/static/demo.js", "text/javascript"),
        ("/static/demo.css", "text/css"),
    ]:
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            media_type
        )
    # the page names its assets by absolute local path only: nothing to fetch from elsewhere
    references = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert references and all(ref.startswith(("/", "#")) for ref in references), references
    for name in ("index.html", "demo.js", "demo.css"):
        assert not re.search(r"https?://|//[a-z]", (STATIC / name).read_text()), name


@pytest.mark.parametrize(
    "path", ["/static/app.py", "/static/../routes/demo.py", "/static/%2e%2e/app.py", "/index.html"]
)
def test_no_other_file_is_reachable(client: TestClient, path: str):
    assert client.get(path).status_code == 404


def test_samples_list_every_variant_with_its_threat_model(client: TestClient, demo_model_dir: Path):
    body = client.get("/samples").json()
    manifest = json.loads((demo_model_dir / "manifest.json").read_text())
    assert body["model"]["name"] == manifest["name"]
    samples = body["samples"]
    assert [s["id"] for s in samples] == [s["id"] for s in manifest["samples"]]
    by_variant = {s["variant"]: s for s in samples if s["source"] == "00"}
    assert set(by_variant) == {"clean", "pgd", "autoattack", "pgd-end-to-end"}
    assert by_variant["clean"]["threat_model"] is None and by_variant["clean"]["eps"] == 0
    assert by_variant["pgd"]["threat_model"] == "classifier-only"
    assert by_variant["autoattack"]["threat_model"] == "classifier-only"
    assert by_variant["pgd-end-to-end"]["threat_model"] == "end-to-end"
    assert by_variant["autoattack"]["attack"]["components"] == ["apgd-ce", "apgd-t"]
    for sample in samples:
        response = client.get(sample["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == (demo_model_dir / "samples" / f"{sample['id']}.png").read_bytes()


@pytest.mark.parametrize(
    ("sample_id", "status"),
    [
        ("99-clean", 404),
        ("manifest", 404),
        ("00-PGD", 422),
        ("..%2Fmanifest.json", 404),
        ("-x", 422),
    ],
)
def test_unknown_or_malformed_sample_ids_are_refused(
    client: TestClient, sample_id: str, status: int
):
    response = client.get(f"/samples/{sample_id}")
    assert response.status_code == status
    assert response.json()["error"]["code"] in (
        "sample_not_found",
        "not_found",
        "invalid_parameters",
    )


def test_tampered_samples_are_never_served(demo_model_dir: Path, tmp_path: Path):
    model_dir = tmp_path / "model"
    shutil.copytree(demo_model_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    records = manifest["samples"]
    records[0]["file"] = "manifest.json"  # a record pointing elsewhere is ignored
    records[1]["id"] = "../manifest"  # so is a malformed id
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    (model_dir / records[2]["file"]).write_bytes(b"edited")  # bytes no longer match sha256
    for client in _started(model_dir):
        listed = [s["id"] for s in client.get("/samples").json()["samples"]]
        assert records[0]["id"] not in listed and "../manifest" not in listed
        assert client.get(f"/samples/{records[0]['id']}").status_code == 404
        corrupt = client.get(f"/samples/{records[2]['id']}")
        assert corrupt.status_code == 500
        assert corrupt.json()["error"]["code"] == "sample_unavailable"
        assert client.get(f"/samples/{records[3]['id']}").status_code == 200


def test_model_without_samples_lists_none(tiny_model_dir: Path):
    for client in _started(tiny_model_dir):
        assert client.get("/samples").json()["samples"] == []


def test_purify_noise_output_is_the_noise_level_map(client: TestClient, demo_model_dir: Path):
    image = (demo_model_dir / "samples" / "00-pgd-end-to-end.png").read_bytes()
    files = {"file": ("x.png", image, "image/png")}
    noise = client.post("/purify", params={"output": "noise"}, files=files)
    purified = client.post("/purify", files=files)
    assert noise.status_code == 200 and noise.headers["content-type"] == "image/png"
    level = float(noise.headers["x-noise-level"])
    assert level == float(purified.headers["x-noise-level"])
    assert noise.headers["x-spike-count"] == purified.headers["x-spike-count"]
    noise_map = Image.open(io.BytesIO(noise.content))
    assert noise_map.mode == "L" and noise_map.size == (28, 28)
    # grey level / 255 is the noise level: its mean is the header's mean (8-bit rounding)
    assert abs(np.asarray(noise_map, np.float64).mean() / 255 - level) < 1 / 255
    assert noise.content != purified.content
    original = client.post("/purify", params={"output": "noise", "size": "original"}, files=files)
    assert Image.open(io.BytesIO(original.content)).size == (28, 28)
    bad = client.post("/purify", params={"output": "logits"}, files=files)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameters"
