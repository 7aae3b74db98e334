"""The real local stack, started without Docker: Kafka, MinIO, PostgreSQL, and mediamtx (the RTSP server test
cameras publish to). `framewatch stack up|down|status|env`."""

from __future__ import annotations

from framewatch.stack.base import LocalService, ServiceStatus, StackError, StackHome
from framewatch.stack.kafka import Kafka
from framewatch.stack.mediamtx import Mediamtx
from framewatch.stack.minio import Minio
from framewatch.stack.postgres import Postgres

__all__ = ["LocalStack", "ServiceStatus", "StackError", "StackHome"]


class LocalStack:
    def __init__(self, home: StackHome | None = None) -> None:
        self.home = home or StackHome.default()
        self.services: list[LocalService] = [Kafka(self.home), Minio(self.home), Postgres(self.home),
                                             Mediamtx(self.home)]

    def up(self) -> None:
        for service in self.services:
            service.up()

    def down(self) -> None:
        for service in reversed(self.services):
            service.down()

    def status(self) -> list[ServiceStatus]:
        return [service.status() for service in self.services]

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for service in self.services:
            variables.update(service.env())
        return variables
