"""``python -m service.client`` against a real service: a folder and files in, CSV or JSON
rows out, the same answers as ``/classify``; bad paths and an unreachable service exit 2."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image
from service_helpers import REPO, free_port, png_bytes


def run_client(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "service.client", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def image_folder(root: Path, images) -> list[Path]:
    (root / "nested").mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        path = root / ("nested" if i % 2 else ".") / f"image-{i}.png"
        path.write_bytes(png_bytes(Image.fromarray(image, "L")))
        paths.append(path.resolve())
    (root / "notes.txt").write_text("not an image, and not sent")
    return paths


def test_a_folder_as_csv_equals_classify(start_server, fashion_images, tmp_path):
    url = start_server()
    paths = image_folder(tmp_path / "images", fashion_images[0][:5])
    result = run_client(str(tmp_path / "images"), "--url", url, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(Path(r["file"]).resolve() for r in rows) == sorted(paths)
    assert "image/s" in result.stderr or "100%" in result.stderr  # the progress bar
    with httpx.Client(base_url=url, timeout=60) as http:
        for row in rows:
            expected = http.post(
                "/classify", files={"file": ("x.png", Path(row["file"]).read_bytes())}
            ).json()
            assert row["label"] == expected["label"]
            assert int(row["class_index"]) == expected["class_index"]
            assert abs(float(row["confidence"]) - expected["confidence"]) < 1e-9
            assert row["version"] == expected["model"]["version"] and not row["error"]


def test_files_as_json_with_an_error_row(start_server, fashion_images, tmp_path):
    url = start_server()
    good = tmp_path / "shirt.png"
    good.write_bytes(png_bytes(Image.fromarray(fashion_images[0][0], "L")))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out.json"
    result = run_client(
        str(good), str(bad), "--url", url, "--format", "json", "-o", str(out), "--no-purify"
    )
    assert result.returncode == 1, result.stderr
    assert "1 of 2 files were not classified" in result.stderr
    first, second = json.loads(out.read_text())
    assert first["file"] == str(good) and first["purified"] is False and first["top_k"]
    assert second["file"] == str(bad) and second["error"].startswith("400: ")
    assert "not a recognisable image" in second["error"]


def test_usage_errors_exit_2(tmp_path):
    missing = run_client(str(tmp_path / "nothing"), "--url", "http://127.0.0.1:9")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(Image.new("L", (28, 28))))
    unreachable = run_client(str(image), "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    bad_url = run_client(str(image), "--url", "127.0.0.1:8000")
    assert bad_url.returncode == 2 and "--url" in bad_url.stderr
    for result in (missing, unreachable, bad_url):
        assert "Traceback" not in result.stderr


def test_the_client_needs_only_the_serve_extra():
    code = (
        "import sys, service.client\n"
        "banned = {'torch', 'httpx', 'requests', 'training'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
