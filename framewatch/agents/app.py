"""The Faust app the worker runs: `create_app` (its settings, with the overrides of agents/faust_overrides.py), the
worker process around it, and the consumer group's health (Faust's figures for Prometheus, `RebalanceWatch`).
The agents it runs are in agents/pipeline.py, the topics they use in agents/topology.py.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator

import faust
from mode import Service
from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from framewatch.agents.faust_overrides import GroupAssignor, WorkerApp, WorkerStream
from framewatch.clients.bus import kafka_options
from framewatch.process import StopsWithinDeadline
from framewatch.schemas.config import Config

log = logging.getLogger("framewatch.worker")

REBALANCE_STALL_S = 120.0  # a rebalance that lasts this long will not end by itself: exit, to be restarted
REBALANCING = Gauge("framewatch_worker_rebalancing", "1 while the worker's consumer group is rebalancing")


class Worker(StopsWithinDeadline, faust.Worker):
    """Faust's worker, stopped within 25 s of SIGTERM or SIGINT whatever it waits on (a consumer that
    cannot reach the broker waits for minutes). Records not yet acknowledged are read again by whoever takes the
    partitions over."""


class ConsumerMetrics(Service, Collector):
    """Faust's own figures of the app's consumer, for Prometheus while the app runs: the lag per partition (end
    offset minus committed offset, as Faust's monitor tracks them) and the rebalances so far."""

    def __init__(self, app: faust.App) -> None:
        super().__init__()
        self.app = app

    async def on_start(self) -> None:
        REGISTRY.register(self)

    async def on_stop(self) -> None:
        REGISTRY.unregister(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the partitions are known only once the consumer has its assignment

    def collect(self) -> Iterator[Metric]:
        monitor = self.app.monitor
        lag = GaugeMetricFamily("framewatch_worker_consumer_lag", "Records not yet committed, per partition read",
                                labels=["topic", "partition"])
        for tp, end in list(monitor.tp_end_offsets.items()):
            if (committed := monitor.tp_committed_offsets.get(tp)) is not None:
                lag.add_metric([tp.topic, str(tp.partition)], max(0, end - committed))
        yield lag
        yield CounterMetricFamily("framewatch_worker_rebalances", "Consumer group rebalances this worker went "
                                  "through", value=self.app.rebalancing_count)


class RebalanceWatch:
    """Ends the process (status 3) when its consumer has been rebalancing for `limit_s`: a consumer that cannot
    rejoin its group would otherwise stall silently while the process looks alive; its supervisor restarts it."""

    def __init__(self, limit_s: float = REBALANCE_STALL_S) -> None:
        self.limit_s = limit_s
        self.since: float | None = None

    def observe(self, rebalancing: bool) -> None:
        REBALANCING.set(int(rebalancing))
        now = time.monotonic()
        if not rebalancing:
            self.since = None
        elif self.since is None:
            self.since = now
        elif now - self.since >= self.limit_s:
            log.error("the worker has been rebalancing for %.0fs and cannot rejoin its group: exiting (status 3) "
                      "so that its supervisor starts it afresh", now - self.since)
            logging.shutdown()
            os._exit(3)


def broker_credentials(config: Config) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """Faust's form of the config's Kafka security settings (the other clients take `kafka_options`)."""
    settings = config.framewatch
    ssl_context = kafka_options(config).get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password.get_secret_value(),
                                     ssl_context=ssl_context, mechanism=settings.kafka_sasl_mechanism)
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return None


def create_app(config: Config) -> faust.App:
    app = WorkerApp(
        config.worker_group,
        broker=[f"kafka://{address}" for address in config.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(config),
        store="memory://",
        datadir=config.framewatch.data_dir or tempfile.mkdtemp(prefix="framewatch-worker-"),
        web_port=config.framewatch.worker_web_port,
        web_host=config.framewatch.bind_host,
        web_bind=config.framewatch.bind_host,  # where it listens (web_host only names it): loopback by default
        # Faust's own pages (/router/, /table/, /graph/, /stats/) would answer without the API token
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        topic_partitions=config.framewatch.topic_partitions,
        topic_replication_factor=config.framewatch.replication_factor,  # its changelogs' too
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=config.framewatch.producer_request_timeout_sec,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,  # a crashed worker's partitions move within 10 s, not Faust's default 60
        stream_wait_empty=True,
        Stream=WorkerStream,  # batches whose wait starts at their first value
        PartitionAssignor=GroupAssignor,  # the group's membership, for capacity without PostgreSQL
    )
    app.add_dependency(ConsumerMetrics(app))
    return app
