"""Prometheus metrics for the server (being written: ``ServerMetrics`` and ``/metrics``)."""

from __future__ import annotations

from typing import Any


class ServerMetrics:
    """Request counters and histograms, fed one log record per request, and engine gauges."""

    def __init__(self, service, voices) -> None:
        self.service, self.voices = service, voices

    def observe_request(self, record: dict[str, Any]) -> None:
        """Count one finished request from its log line's record."""


def add_metrics_route(app) -> None:
    """``GET /metrics`` on ``app``."""
