"""Production defaults: the API docs are a setting, the upload pixel limit follows from the
model's input size."""

from __future__ import annotations

import pytest
from test_errors import assert_error, png_header_only, upload

from service.config import Settings, available_cores, cgroup_cpu_limit, default_max_pixels


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


@pytest.mark.parametrize(
    ("streams", "threads", "layout"),
    [
        (None, None, (4, 1)),  # one stream per core, one thread each
        (None, 2, (2, 2)),
        (None, 8, (1, 8)),
        (2, None, (2, 2)),
        (3, None, (3, 1)),
        (8, None, (8, 1)),
        (2, 3, (2, 3)),  # both set: as given, even past the cores
    ],
)
def test_inference_streams_and_threads_share_the_cores(
    monkeypatch, tiny_model_dir, streams, threads, layout
):
    monkeypatch.setattr("service.config.available_cores", lambda: 4)
    settings = Settings(
        model_dir=tiny_model_dir, inference_streams=streams, intra_op_threads=threads
    )
    assert (settings.inference_streams, settings.intra_op_threads) == layout


def test_readyz_names_the_inference_layout(make_client):
    body = make_client(inference_streams=2, intra_op_threads=1).get("/readyz").json()
    assert body["inference"] == {"streams": 2, "intra_op_threads": 1}


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2, a 2-CPU container
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # unlimited
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files: no limit known
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_the_cgroup_cpu_limit_is_read(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_a_cpu_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr("service.config.cgroup_cpu_limit", lambda: 2.5)
    assert available_cores() == 2
    monkeypatch.setattr("service.config.cgroup_cpu_limit", lambda: 0.5)
    assert available_cores() == 1
    monkeypatch.setattr("service.config.cgroup_cpu_limit", lambda: None)
    assert available_cores() == 64
