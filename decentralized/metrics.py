"""Prometheus metrics of a node: requests, latency, bytes, errors, peers, sessions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    """One registry per node process, exported on its metrics port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "secure_infer_requests",
            "RPCs served, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "secure_infer_request_seconds",
            "RPC latency in seconds, by method",
            ["method"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.bytes_in = Counter(
            "secure_infer_tensor_bytes_received", "tensor bytes received", registry=self.registry
        )
        self.bytes_out = Counter(
            "secure_infer_tensor_bytes_sent", "tensor bytes sent", registry=self.registry
        )
        self.errors = Counter(
            "secure_infer_errors",
            "RPCs that ended in an error, by method",
            ["method"],
            registry=self.registry,
        )
        self.peers = Gauge("secure_infer_peers", "live peers known", registry=self.registry)
        self.sessions = Gauge(
            "secure_infer_sessions", "open generation sessions", registry=self.registry
        )
        self.in_flight = Gauge("secure_infer_in_flight", "RPCs in flight", registry=self.registry)
