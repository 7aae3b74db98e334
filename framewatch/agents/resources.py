"""What the worker's agents share, started before them and stopped after them."""

from __future__ import annotations

from mode import Service

from framewatch.agents.catalog import camera_states, open_incidents, task_catalog
from framewatch.agents.inference.capacity import CapacityShare
from framewatch.agents.inference.client import ServiceClient
from framewatch.agents.inference.registry import ServiceRegistry
from framewatch.agents.inference.scheduler import InferenceScheduler
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import Config
from framewatch.schemas.tasks import CameraTask


class Resources(Service):
    """What the agents share: the object store, the alert store, the service registry, the inference scheduler,
    the tasks and camera states as the extractors publish them."""

    def __init__(self, config: Config, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self.store = ObjectStore(config.frame_extractor.minio)
        self.alerts = AlertStore.of(config)
        self.registry = ServiceRegistry(config)
        self.catalog = task_catalog(config)  # fw.tasks
        self.camera_states = camera_states(config)  # fw.cameras
        self.incidents = open_incidents(config)  # fw.incidents
        self.client = ServiceClient(config, self.store, regions=self.region_of)
        # each service's capacity, shared with the other workers (slots are PostgreSQL advisory locks)
        self.capacity = CapacityShare(config.database.dsn.get_secret_value(), config.framewatch.namespace,
                                      request_timeout_s=config.ai_analysis.infer_timeout_sec)
        self.scheduler = InferenceScheduler(config, self.registry, self.client, self.capacity)

    async def on_start(self) -> None:
        await self.store.ensure_bucket()
        await self.alerts.connect()
        await self.registry.start()
        await self.catalog.start()
        await self.camera_states.start()
        await self.incidents.start()
        await self.capacity.start()
        await self.scheduler.start()

    async def on_stop(self) -> None:
        await self.scheduler.stop()
        await self.capacity.stop()
        await self.incidents.stop()
        await self.camera_states.stop()
        await self.catalog.stop()
        await self.registry.stop()
        await self.client.close()
        await self.alerts.close()

    def region_of(self, task_id: str) -> list[tuple[float, float]] | None:
        task = self.task_settings(task_id)
        return None if task is None else task.region

    def frame_limit(self, task_id: str) -> int:
        return self.config.frame_extractor.frame_limit(self.task_settings(task_id))

    def task_settings(self, task_id: str) -> CameraTask | None:
        """A task's rule settings as fw.tasks has them, else as this worker's config declares them, else None."""
        try:
            return self.catalog.values.get(task_id) or self.config.task(task_id)
        except KeyError:
            return None
