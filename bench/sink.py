"""Alert sink benchmark: ways of writing alerts to the same PostgreSQL, side by side in one run, then the alert
path end to end.

    .venv/bin/python bench/sink.py [--alerts 2000] [--seconds 20] [--json out.json]

Write methods, each into a fresh `alerts` table of its own schema, at batch sizes 1, 20, 100 and 1000 (ms per
alert, wall clock):
  insert_each   one INSERT per alert, each its own transaction (the seed's way before batching)
  executemany   one executemany INSERT per batch, in one transaction
  framewatch    AlertStore.insert: the batch as one array per column in one INSERT … SELECT FROM unnest(…)
                ON CONFLICT DO NOTHING (idempotent)
  copy_merge    the batch COPYed (binary) into a temporary table, then INSERT … SELECT … ON CONFLICT DO NOTHING
  copy_floor    the batch COPYed (binary) straight into the table: not idempotent (a replayed alert would fail
                the batch), the floor of what PostgreSQL takes
Each figure is the best of three rounds (row building included).
End to end: a worker with two 10 ms fake services and 10 alerting cameras at 2 frames/s: alert emitted (rules)
-> message committed on the alert topic, p50 / p99, split at the moment PostgreSQL stored it (the message's
`stored_at`): emitted -> stored, stored -> published.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import cv2
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from framewatch.clients.database import ALERT_COLUMNS, AlertStore, alert_row
from framewatch.ops.load import FrameLoad, print_figures, start_fleet
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import AlertEvent
from framewatch.stack import LocalStack

BATCH_SIZES = (1, 20, 100, 1000)
RULE = "area_intrusion"
INSERT = (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES "
          f"({', '.join(f'${i}' for i in range(1, len(ALERT_COLUMNS) + 1))}) "
          "ON CONFLICT (namespace, alert_id) DO NOTHING")


def make_alerts(config: Config, count: int) -> list[AlertEvent]:
    load = FrameLoad(config, cameras=10, fps_per_camera=1, prefix="bench")
    frames = [load.frame(load.cameras[i % 10]) for i in range(count)]
    return [AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, RULE), frame=f, rule=RULE,
                       evidence={"count": 1, "boxes": [{"label": "person", "score": 0.9, "box": [0.1, 0.2, 0.3, 0.6]}]},
                       image_key=f.object_key.replace("frames/", "alerts/")) for f in frames]


async def insert_each(connection: asyncpg.Connection, store: AlertStore, batch: list[AlertEvent]) -> None:
    for alert in batch:
        await connection.execute(INSERT, *alert_row(store.namespace, alert))


async def executemany(connection: asyncpg.Connection, store: AlertStore, batch: list[AlertEvent]) -> None:
    async with connection.transaction():
        await connection.executemany(INSERT, [alert_row(store.namespace, a) for a in batch])


STAGING = "CREATE TEMPORARY TABLE IF NOT EXISTS staged_alerts (LIKE alerts INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
MERGE_STAGED = (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) SELECT {', '.join(ALERT_COLUMNS)} FROM staged_alerts "
                "ON CONFLICT (namespace, alert_id) DO NOTHING")


async def copy_merge(connection: asyncpg.Connection, store: AlertStore, batch: list[AlertEvent]) -> None:
    async with connection.transaction():
        await connection.execute(STAGING)
        await connection.copy_records_to_table("staged_alerts", records=[alert_row(store.namespace, a) for a in batch],
                                               columns=ALERT_COLUMNS)
        await connection.execute(MERGE_STAGED)


async def copy_floor(connection: asyncpg.Connection, store: AlertStore, batch: list[AlertEvent]) -> None:
    await connection.copy_records_to_table("alerts", records=[alert_row(store.namespace, a) for a in batch],
                                           columns=ALERT_COLUMNS)


async def framewatch_sink(_: asyncpg.Connection, store: AlertStore, batch: list[AlertEvent]) -> None:
    await store.insert(batch)


WRITERS = {"insert_each": insert_each, "executemany": executemany, "framewatch": framewatch_sink,
           "copy_merge": copy_merge, "copy_floor": copy_floor}
ROUNDS = 3  # the best of three: this machine is shared and noisy


async def write_methods(config: Config, count: int) -> dict[str, dict[str, float]]:
    dsn = config.database.dsn.get_secret_value()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"
    store = AlertStore(scoped, config.framewatch.namespace)
    await store.connect()  # migrates: a fresh alerts table in the bench schema
    connection = await asyncpg.connect(scoped)
    results: dict[str, dict[str, float]] = {method: {} for method in WRITERS}
    try:
        for size in BATCH_SIZES:
            for method in results:
                timings = []
                for _ in range(ROUNDS):
                    alerts = make_alerts(config, count)
                    batches = [alerts[i:i + size] for i in range(0, len(alerts), size)]
                    started = time.perf_counter()
                    for batch in batches:
                        await WRITERS[method](connection, store, batch)
                    timings.append((time.perf_counter() - started) * 1000 / count)
                results[method][str(size)] = round(min(timings), 4)
    finally:
        await connection.close()
        await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return results


def end_to_end(env: dict[str, str], seconds: float) -> dict[str, Any]:
    prefix = "b" + uuid.uuid4().hex[:6]
    tasks = "".join(f'[[frame_extractor.tasks]]\nid = "{prefix}-{i:03d}"\ntask_type = "area_intrusion"\n'
                    f'rtsp_url = "unused"\ncooldown_sec = 0\n' for i in range(10))
    config = f"[ai_analysis]\nalert_batch_size = 100\nalert_batch_interval_sec = 1\n{tasks}"
    image = bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))[1])
    with start_fleet(Path(tempfile.mkdtemp(prefix="framewatch-bench-")), env, 2, config, latency_ms=10,
                     people=1) as fleet:
        run_config = fleet.run.config
        processes = len(fleet.run.processes) + 4  # the services and the worker, the load, Kafka, MinIO, PostgreSQL

        async def measure() -> list[tuple[float, float]]:
            """Seen by a read_committed consumer: the moment the publisher's transaction commits."""
            consumer = AIOKafkaConsumer(run_config.ai_analysis.mq_topic, bootstrap_servers=run_config.kafka_bootstrap,
                                        group_id=None, isolation_level="read_committed", auto_offset_reset="earliest")
            await consumer.start()
            load = asyncio.create_task(
                FrameLoad(run_config, cameras=10, fps_per_camera=2, prefix=prefix, image=image).run(seconds))
            delays: list[tuple[float, float]] = []  # emitted -> published, stored -> published
            quiet_since = time.monotonic()
            while not load.done() or time.monotonic() - quiet_since < 5:
                batches = await consumer.getmany(timeout_ms=50)
                seen = time.time() * 1000
                for record in (r for records in batches.values() for r in records if r.value):
                    message = orjson.loads(record.value)
                    delays.append((seen - message["emitted_at"], seen - message["stored_at"]))
                    quiet_since = time.monotonic()
            await consumer.stop()
            await load
            return delays

        delays = asyncio.run(measure())
    interval_ms = 1000.0
    total = sorted(d for d, _ in delays)
    publishing = sorted(p for _, p in delays)
    storing = sorted(d - p for d, p in delays)

    def at(values: list[float], q: float) -> int:
        return round(values[int(q * (len(values) - 1))])

    return {"alerts": len(delays), "alert_batch_interval_ms": interval_ms,
            "emitted_to_published_ms_p50": at(total, 0.5), "emitted_to_published_ms_p99": at(total, 0.99),
            "emitted_to_stored_ms_p50": at(storing, 0.5), "emitted_to_stored_ms_p99": at(storing, 0.99),
            "stored_to_published_ms_p50": at(publishing, 0.5), "stored_to_published_ms_p99": at(publishing, 0.99),
            "processes": processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=2000, help="alerts per method and batch size")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = LocalStack()
    stack.up()
    env = stack.env()
    config, _ = load_config(None, {**os.environ, **env})
    writes = asyncio.run(write_methods(config, args.alerts))
    path = end_to_end(env, args.seconds)
    print(f"\nms per alert ({args.alerts} alerts each)")
    print(f"{'batch size':>10} " + " ".join(f"{m:>12}" for m in writes))
    for size in BATCH_SIZES:
        print(f"{size:>10} " + " ".join(f"{writes[m][str(size)]:>12.4f}" for m in writes))
    print(f"\nalert emitted -> published: p50 {path['emitted_to_published_ms_p50']} ms, "
          f"p99 {path['emitted_to_published_ms_p99']} ms over {path['alerts']} alerts "
          f"(batch interval {path['alert_batch_interval_ms']:.0f} ms); emitted -> stored p50/p99 "
          f"{path['emitted_to_stored_ms_p50']}/{path['emitted_to_stored_ms_p99']} ms, stored -> published "
          f"{path['stored_to_published_ms_p50']}/{path['stored_to_published_ms_p99']} ms")
    ratio = round(writes["insert_each"]["100"] / writes["framewatch"]["100"], 1)
    floor = round(writes["insert_each"]["100"] / writes["copy_floor"]["100"], 1)
    to_copy = round(writes["framewatch"]["100"] / writes["copy_floor"]["100"], 3)
    print(f"batch 100 vs one INSERT per alert: framewatch {ratio}x, raw COPY {floor}x (the floor); "
          f"framewatch's ms per alert / raw COPY's {to_copy}")
    writes["speedup_at_100"] = {"framewatch": ratio, "copy_floor": floor,
                                "copy_merge": round(writes["insert_each"]["100"] / writes["copy_merge"]["100"], 1)}
    print_figures({"ms_per_alert": writes, "framewatch_to_copy_at_100": to_copy, "end_to_end": path}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
