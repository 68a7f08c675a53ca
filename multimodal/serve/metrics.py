"""Prometheus metrics of the server (``GET /metrics``), in a registry of each app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Queue length, batch sizes, latency and requests per task."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.queue_length = Gauge("multimodal_queue_length", "Requests waiting for the model",
                                  ["lane"], registry=self.registry)
        self.batch_size = Histogram("multimodal_batch_size", "Requests per model call",
                                    ["task"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.latency = Histogram("multimodal_request_latency_seconds",
                                 "Time from arrival to the full answer", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("multimodal_requests", "Requests answered, by status",
                                ["task", "status"], registry=self.registry)
        self.cancelled = Counter("multimodal_cancelled", "Jobs stopped mid-way (client gone, "
                                 "timeout)", ["kind"], registry=self.registry)
        self.rejected = Counter("multimodal_rejected", "Requests refused with 429 (queue full)",
                                ["task"], registry=self.registry)
