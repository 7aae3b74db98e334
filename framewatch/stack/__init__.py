"""The real local stack, started without Docker: Kafka, MinIO, PostgreSQL, mediamtx (the RTSP server test
cameras publish to) and Toxiproxy (the fault tests' link to Kafka). `framewatch stack up|down|status|env`."""

from __future__ import annotations

from framewatch.stack.base import LocalService, ServiceStatus, StackError, StackHome
from framewatch.stack.kafka import Kafka
from framewatch.stack.mediamtx import Mediamtx
from framewatch.stack.minio import Minio
from framewatch.stack.postgres import Postgres
from framewatch.stack.toxiproxy import Toxiproxy

__all__ = ["LocalStack", "ServiceStatus", "StackError", "StackHome"]


class LocalStack:
    """The local stack, with one Kafka broker or a cluster of `brokers` (a different cluster on other ports)."""

    def __init__(self, home: StackHome | None = None, brokers: int = 1) -> None:
        self.home = home or StackHome.default()
        self.brokers = [Kafka(self.home, node, brokers) for node in range(1, brokers + 1)]
        self.services: list[LocalService] = [*self.brokers, Minio(self.home), Postgres(self.home),
                                             Mediamtx(self.home)]
        if brokers == 1:  # the fault tests' proxy before the single broker's PROXIED listener
            self.services.append(Toxiproxy(self.home))

    def up(self) -> None:
        # a cluster's nodes start together: none answers before a majority of its controllers runs
        launched = [(broker, broker.launch()) for broker in self.brokers]
        for broker, process in launched:
            broker.wait_up(process)
        for service in self.services[len(self.brokers):]:
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
        variables["FRAMEWATCH_KAFKA_BOOTSTRAP"] = ",".join(broker.address for broker in self.brokers)
        return variables
