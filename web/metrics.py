"""GET /metrics: the cluster's request metrics in Prometheus text format.

Nothing is counted here: each component counts its own requests and sends
the totals in its heartbeats, and this collector renders the latest ones at
scrape time; so are the internal messages each component dropped
(`taskring_dropped_messages_total`: malformed ones, and outgoing ones its MQTT
client dropped because the broker could not keep up). The web process's own
HTTP requests are counted in the same RequestMetrics shape and rendered from
memory, so they show even while the broker is down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from backend.core.cluster_view import Component

ComponentSource = Callable[[], tuple[list[Component], float]]


class ClusterCollector(Collector):
    """Renders every known component's heartbeat metrics; `source()` gives (components, now)."""

    def __init__(self, source: ComponentSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        components, now = self.source()
        requests = CounterMetricFamily(
            "taskring_requests",
            "Requests served, by component, operation and outcome (ok or an error code).",
            labels=["component", "kind", "op", "outcome"],
        )
        durations = HistogramMetricFamily(
            "taskring_request_duration_seconds",
            "Time to serve a request, by component and operation.",
            labels=["component", "kind", "op"],
        )
        up = GaugeMetricFamily(
            "taskring_component_up",
            "1 while the component's heartbeats arrive, 0 once they stop.",
            labels=["component", "kind"],
        )
        dropped = CounterMetricFamily(
            "taskring_dropped_messages",
            "Internal messages dropped (malformed, or outgoing ones the broker could not take),"
            " by component, message and reason.",
            labels=["component", "kind", "message", "reason"],
        )
        ready = GaugeMetricFamily(
            "taskring_component_ready",
            "1 when the component says it can take a write now.",
            labels=["component", "kind"],
        )
        for component in components:
            _add_component(component, now, requests, durations, up, ready)
            for message, reason, count in component.heartbeat.metrics.dropped:
                dropped.add_metric([component.id, component.kind, message, reason], count)
        yield from (requests, durations, up, ready, dropped)


def _add_component(
    component: Component,
    now: float,
    requests: CounterMetricFamily,
    durations: HistogramMetricFamily,
    up: GaugeMetricFamily,
    ready: GaugeMetricFamily,
) -> None:
    labels = [component.id, component.kind]
    metrics = component.heartbeat.metrics
    for op, outcome, count in metrics.requests:
        requests.add_metric([*labels, op, outcome], count)
    for latency in metrics.latency:
        durations.add_metric([*labels, latency.op], latency.cumulative(), latency.total_seconds)
    up.add_metric(labels, 1.0 if component.alive(now) else 0.0)
    ready.add_metric(labels, 1.0 if component.ready(now) else 0.0)
