"""The worker's HTTP surface: Prometheus metrics, a live stats line, the algorithm services."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from framewatch.agents.app import Resources


def _total(name: str, **labels: str) -> float:
    return sum(s.value for m in REGISTRY.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def attach_web(app: faust.App, resources: Resources) -> None:
    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            scheduler = resources.scheduler
            stats: dict[str, Any] = {
                "partitions_assigned": len(app.consumer.assignment()),
                "services_alive": len(resources.registry.alive()),
                "requests": _total("framewatch_inference_requests_total"),
                "responses": _total("framewatch_inference_responses_total"),
                "failures": _total("framewatch_inference_failures_total"),
                "queue_size": len(scheduler.waiting),
                "queue_max": scheduler.waiting_max,
                "max_size": scheduler.max_waiting,
                "in_flight": scheduler.in_flight,
                "processed_total": _total("framewatch_inference_frames_total", outcome="inferred"),
                "dropped_total": _total("framewatch_inference_frames_total", outcome="dropped"),
                "failed_total": _total("framewatch_inference_frames_total", outcome="failed"),
                "alerts_stored": _total("framewatch_sink_alerts_stored_total"),
                "alerts_published": _total("framewatch_publisher_alerts_published_total"),
                "alerts_relocated": _total("framewatch_relocation_copied_total"),
                "relocation_dead_letters": _total("framewatch_relocation_dead_letters_total"),
                "frames_deleted": _total("framewatch_retention_deleted_total"),
            }
            return self.json(stats)

    @app.page("/api/services")
    class Services(View):
        async def get(self, request: Request) -> Response:
            return self.json({"services": resources.scheduler.services_view()})
