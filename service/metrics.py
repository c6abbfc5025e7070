"""Prometheus metrics, one registry per app instance (several apps can live in one process,
as they do in the tests). The names are a contract with the dashboards and alert rules in
``deploy/``: change them only together."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SPIKE_BUCKETS = tuple(float(10**e * m) for e in range(2, 8) for m in (1, 2.5, 5))
NOISE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode", "purify", "classify")
NETWORKS = ("purifier", "classifier")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "spikeguard_request_duration_seconds",
            "HTTP request latency, by route template and status class (2xx, 4xx, 5xx)",
            ["endpoint", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "spikeguard_stage_duration_seconds",
            "Time of one pipeline stage: decode per request, purify and classify per batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.spikes_per_image = Histogram(
            "spikeguard_spikes_per_image",
            "Total spikes one image caused in a network",
            ["network"],
            buckets=SPIKE_BUCKETS,
            registry=r,
        )
        self.noise_level = Histogram(
            "spikeguard_noise_level",
            "Mean estimated noise level of a purified image (0..1)",
            buckets=NOISE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "spikeguard_batch_size",
            "Images per inference batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "spikeguard_queue_depth", "Requests waiting for an inference batch", registry=r
        )
        self.inflight = Gauge(
            "spikeguard_inflight_requests", "HTTP requests being handled", registry=r
        )
        self.rejected = Counter(
            "spikeguard_rejected_requests",
            "Requests refused, by reason (queue_full, not_ready, too_large, ...)",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "spikeguard_model_info",
            "The model being served (value 1), with its name, version and execution provider",
            ["name", "version", "provider"],
            registry=r,
        )
        self.neuron_kernel = Gauge(
            "spikeguard_neuron_kernel",
            "How the served graphs' MLF neurons run (value 1): native (the kernel library), "
            "fallback (the graphs' function body) or unused (no MLF nodes)",
            ["mode"],
            registry=r,
        )
        self.ready = Gauge(
            "spikeguard_ready", "1 when the model is loaded and serving, else 0", registry=r
        )
        self.reloads = Counter(
            "spikeguard_model_reloads",
            "Model reloads (SIGHUP) by result: ok, or failed (the model before keeps serving)",
            ["result"],
            registry=r,
        )
        # the children the request path observes, resolved once (``labels()`` costs more
        # than the observation itself)
        self.stage = {s: self.stage_duration.labels(stage=s) for s in STAGES}
        self.spikes = {n: self.spikes_per_image.labels(network=n) for n in NETWORKS}
        self._request_durations: dict[tuple[str, str], Histogram] = {}
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)

    def request_duration_of(self, endpoint: str, status_class: str) -> Histogram:
        """``request_duration`` for one route template and status class, cached."""
        key = (endpoint, status_class)
        child = self._request_durations.get(key)
        if child is None:
            child = self._request_durations[key] = self.request_duration.labels(
                endpoint=endpoint, status_class=status_class
            )
        return child
