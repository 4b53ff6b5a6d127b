"""Prometheus metrics: per-RPC counters and latency histograms, and the /metrics endpoint."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "couturier_rpc_requests_total",
    "Finished RPCs by service, method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "couturier_rpc_latency_seconds",
    "RPC handling time by service and method.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def start_metrics_endpoint(host: str, port: int) -> int:
    """Serve /metrics over HTTP on host:port (0: a free port); returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)
