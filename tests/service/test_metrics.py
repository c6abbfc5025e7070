"""/metrics carries every metric the dashboards and alerts rely on."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

EXPECTED = {
    "spikeguard_request_duration_seconds": ("histogram", {"endpoint", "status_class"}),
    "spikeguard_stage_duration_seconds": ("histogram", {"stage"}),
    "spikeguard_spikes_per_image": ("histogram", {"network"}),
    "spikeguard_noise_level": ("histogram", set()),
    "spikeguard_batch_size": ("histogram", set()),
    "spikeguard_queue_depth": ("gauge", set()),
    "spikeguard_inflight_requests": ("gauge", set()),
    "spikeguard_rejected_requests": ("counter", {"reason"}),
    "spikeguard_model_info": ("gauge", {"name", "version", "provider"}),
}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_metric_is_exposed_with_its_labels(client, fashion_png):
    client.post("/classify", files={"file": ("x.png", fashion_png)})
    client.post("/classify", files={"file": ("x.png", b"junk")})
    found = families(client.get("/metrics").text)
    for name, (kind, labels) in EXPECTED.items():
        assert name in found, f"{name} missing"
        assert found[name].type == kind, (name, found[name].type)
        samples = [s for s in found[name].samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        assert any(labels <= set(s.labels) - {"le"} for s in samples), (name, samples[:2])


def test_metrics_record_what_happened(client, fashion_png):
    client.post("/classify", files={"file": ("x.png", fashion_png)})
    found = families(client.get("/metrics").text)

    def value(family: str, sample: str, **labels) -> float:
        return next(
            s.value
            for s in found[family].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    count = "spikeguard_request_duration_seconds_count"
    ok = {"endpoint": "/classify", "status_class": "2xx"}
    assert value("spikeguard_request_duration_seconds", count, **ok) == 1
    for stage in ("decode", "purify", "classify"):
        assert (
            value(
                "spikeguard_stage_duration_seconds",
                "spikeguard_stage_duration_seconds_count",
                stage=stage,
            )
            == 1
        )
    for network in ("purifier", "classifier"):
        assert (
            value("spikeguard_spikes_per_image", "spikeguard_spikes_per_image_sum", network=network)
            > 0
        )
    assert value("spikeguard_noise_level", "spikeguard_noise_level_count") == 1
    assert value("spikeguard_batch_size", "spikeguard_batch_size_count") == 1
    info = [s for s in found["spikeguard_model_info"].samples]
    assert (
        info[0].labels
        == {
            "name": "tiny-fashion-mnist",
            "version": "0.0.1",
            "provider": "CPUExecutionProvider",
        }
        and info[0].value == 1
    )


def test_each_app_has_its_own_registry(make_client, fashion_png):
    first, second = make_client(), make_client()
    first.post("/classify", files={"file": ("x.png", fashion_png)})
    assert 'endpoint="/classify"' in first.get("/metrics").text
    assert 'endpoint="/classify"' not in second.get("/metrics").text
