"""Inference scheduling benchmark: a real worker against fleets of misbehaving services, side by side in one run.

    .venv/bin/python bench/inference.py [--seconds 30] [--warm-up 5] [--json out.json]

Scenarios (each in a namespace of its own, against the local stack):
  utilisation  6 services x 140 ms, capacity 1, offered 60 frames/s: achieved / fleet capacity (42.9 frames/s)
  overhead     the same fleet at 30 frames/s: end-to-end time (frame event emitted -> detections emitted) minus
               the time inside the service, p50 and p99; split into frame sent -> dispatched and the HTTP round
               trip beyond the service; and the worker's event-loop lag and its garbage-collection pauses over
               10 ms (its own metrics) over the same seconds
  overload     1 service x 140 ms against 14 cameras x 7 frames/s (13.7 : 1, the seed's ratio): frame age at
               dispatch p50/p99 while the overload lasts (after the warm-up, until the cameras stop; then each camera's
               last frame waits its turn with nothing newer, up to max_frame_age_ms, reported apart), frames
               dropped, most frames waiting
  seed FIFO    the design framewatch replaces, under the same overload in the same run: one consumer reading
               fw.frames in order and sending each frame to the one 140 ms service when the previous answer is in
               (one FIFO queue, no freshness, no breaker): frame age at dispatch p50/p99 while the overload lasts
Prints a readable table, then the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from framewatch.clients.bus import ensure_topics, kafka_options
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import (
    Fleet,
    FrameLoad,
    TopicFollower,
    free_port,
    histogram_quantile,
    inferred_per_s,
    namespaced_env,
    print_figures,
    print_table,
    scrape_histogram,
    start_fleet,
)
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.contract import HEALTH_PATH, INFER_PATH, InferFrame, InferRequest
from framewatch.schemas.events import DetectionEvent, FrameEvent, FrameOutcome, Outcome, now_ms
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES, FRAMES
from framewatch.stack import LocalStack

LATENCY_MS = 140.0
LOOP_LAG = "framewatch_event_loop_lag_seconds"
GC_PAUSE = "framewatch_gc_pause_seconds"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def drive(fleet: Fleet, cameras: int, fps: float, seconds: float) -> tuple[list[Any], int, int, int]:
    follower = TopicFollower(fleet.run.config, [DETECTIONS, FRAME_OUTCOMES])
    await follower.start()
    load = FrameLoad(fleet.run.config, cameras=cameras, fps_per_camera=fps)
    started = now_ms()
    await load.run(seconds)
    ended = now_ms()
    await follower.collect_until(lambda events: sum(isinstance(e, FrameOutcome) for e in events) >= load.sent, 60)
    await follower.stop()
    return follower.events, load.sent, started, ended


def busy_processes(fleet: Fleet) -> int:
    return len(fleet.run.processes) + 2  # the services and the worker, the load generator (this one) and Kafka


async def utilisation_and_overhead(fleet: Fleet, seconds: float, warm_up_ms: int) -> dict[str, Any]:
    events, _, started, ended = await drive(fleet, cameras=12, fps=5, seconds=seconds)
    capacity = 6 * 1000 / LATENCY_MS
    achieved = inferred_per_s(events, started + warm_up_ms, ended)
    lag_before = scrape_histogram(fleet.run.metrics_url, LOOP_LAG)
    pauses_before = scrape_histogram(fleet.run.metrics_url, GC_PAUSE)
    events, sent, started, _ = await drive(fleet, cameras=6, fps=5, seconds=seconds)
    lag = scrape_histogram(fleet.run.metrics_url, LOOP_LAG)
    pauses = scrape_histogram(fleet.run.metrics_url, GC_PAUSE)
    steady = [e for e in events if isinstance(e, DetectionEvent) and e.emitted_at >= started + warm_up_ms
              and e.service_ms is not None]
    overhead = [(d.emitted_at - d.frame.emitted_at) - (d.service_ms or 0.0) for d in steady]
    # where it goes: frame event sent -> dispatched (Kafka, the worker's consumer, the scheduler), the HTTP round
    # trip beyond the service's own time, and answer -> DetectionEvent
    to_dispatch = [float((d.dispatched_at or 0) - d.frame.emitted_at) for d in steady]
    http = [d.inference_ms - (d.service_ms or 0.0) for d in steady]
    return {"fleet_capacity_fps": round(capacity, 1), "achieved_fps": round(achieved, 1),
            "utilisation": round(achieved / capacity, 3),
            "overhead_at_30fps_ms_p50": round(percentile(overhead, 50), 1),
            "overhead_at_30fps_ms_p99": round(percentile(overhead, 99), 1),
            "sent_to_dispatched_ms_p50": round(percentile(to_dispatch, 50), 1),
            "sent_to_dispatched_ms_p99": round(percentile(to_dispatch, 99), 1),
            "http_beyond_service_ms_p50": round(percentile(http, 50), 1),
            "http_beyond_service_ms_p99": round(percentile(http, 99), 1),
            # the worker's event loop, sampled every 250 ms: how late a task due now ran
            "event_loop_lag_ms_p50": lag_ms(lag, 0.5, lag_before),
            "event_loop_lag_ms_p99": lag_ms(lag, 0.99, lag_before),
            # every thread of the worker stood still meanwhile
            "gc_pauses_over_10ms": observed_over(pauses, pauses_before, 0.01),
            "overhead_frames": len(overhead), "frames_at_30fps": sent, "processes": busy_processes(fleet)}


def observed_over(buckets: dict[float, float], since: dict[float, float], bound: float) -> int:
    above = {b: count - since.get(b, 0.0) for b, count in buckets.items() if b in (bound, float("inf"))}
    return int(above.get(float("inf"), 0.0) - above.get(bound, 0.0))


def lag_ms(buckets: dict[float, float], q: float, since: dict[float, float]) -> float | None:
    value = histogram_quantile(buckets, q, since)
    return None if value is None else round(value * 1000, 1)


async def overload(fleet: Fleet, seconds: float, warm_up_ms: int) -> dict[str, Any]:
    events, sent, started, ended = await drive(fleet, cameras=14, fps=7, seconds=seconds)
    detections = [e for e in events if isinstance(e, DetectionEvent) and e.dispatched_at is not None]
    ages = [float(d.dispatched_at - d.frame.captured_at) for d in detections if d.dispatched_at is not None]
    # while the overload lasts: once the cameras stop, each one's last frame waits its turn with nothing newer
    steady = [float(d.dispatched_at - d.frame.captured_at) for d in detections if d.dispatched_at is not None
              and started + warm_up_ms <= d.frame.captured_at and d.dispatched_at <= ended]
    outcomes = [e for e in events if isinstance(e, FrameOutcome)]
    stats = fleet.run.stats()
    return {"offered_fps": 98, "capacity_fps": round(1000 / LATENCY_MS, 2), "frames": sent,
            "inferred": len(detections), "dropped": sum(o.outcome is Outcome.DROPPED for o in outcomes),
            "failed": sum(o.outcome is Outcome.FAILED for o in outcomes),
            "unaccounted": sent - len({o.frame.frame_id for o in outcomes}),
            "age_at_dispatch_ms_p50": round(statistics.median(ages)),
            "age_at_dispatch_ms_p99": round(percentile(ages, 99)),
            "age_at_dispatch_ms_p99_steady": round(percentile(steady, 99)), "age_at_dispatch_ms_max": round(max(ages)),
            "most_waiting": None if stats is None else stats.queue_max, "processes": busy_processes(fleet)}


async def fifo_dispatch(config: Config, endpoint: str, seconds: float) -> dict[str, Any]:
    """The seed's loop: every frame in arrival order, the next one sent when the service has answered."""
    consumer = AIOKafkaConsumer(config.topic(FRAMES.name), **kafka_options(config), group_id=None,
                                auto_offset_reset="latest")
    await consumer.start()
    await consumer.seek_to_end()
    load = FrameLoad(config, cameras=14, fps_per_camera=7)
    sending = asyncio.create_task(load.run(seconds))
    ages: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        while not sending.done():
            batches = await consumer.getmany(timeout_ms=200)
            for record in (r for records in batches.values() for r in records):
                frame = FrameEvent.decode(record.value)
                if sending.done():
                    break
                ages.append(float(now_ms() - frame.captured_at))  # it falls further behind from the start
                request = InferRequest(frames=[InferFrame(frame_id=frame.frame_id, task_type=frame.task_type,
                                                          image_url=f"http://unused/{frame.object_key}")])
                (await client.post(endpoint + INFER_PATH, content=request.model_dump_json(),
                                   headers={"Content-Type": "application/json"})).raise_for_status()
    await sending
    await consumer.stop()
    return {"frames": load.sent, "dispatched_while_overloaded": len(ages),
            "age_at_dispatch_ms_p50": round(statistics.median(ages)), "age_at_dispatch_ms_p99": round(percentile(ages, 99))}


def seed_fifo(stack_env: dict[str, str], folder: Path, seconds: float) -> dict[str, Any]:
    env = namespaced_env(stack_env)
    path = folder / "fifo.toml"
    path.write_text("", encoding="utf-8")
    config, _ = load_config(path, env)
    asyncio.run(ensure_topics(config))
    port = free_port()
    service = ServiceProcess("fifo-detector", ["fake-detector", "-c", str(path), "--instances", "1", "--port",
                                               str(port), "--latency-ms", str(LATENCY_MS)], env, folder / "logs")
    try:
        for _ in range(60):
            try:
                httpx.get(f"http://127.0.0.1:{port}{HEALTH_PATH}", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        return asyncio.run(fifo_dispatch(config, f"http://127.0.0.1:{port}", seconds))
    finally:
        service.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="each load's length (the overloads' twice that)")
    parser.add_argument("--warm-up", type=float, default=5, help="seconds of each load left out of its figures")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = LocalStack()
    stack.up()
    env = stack.env()
    folder = Path(tempfile.mkdtemp(prefix="framewatch-bench-"))
    with start_fleet(folder / "six", env, 6, latency_ms=LATENCY_MS) as six:
        fleet = asyncio.run(utilisation_and_overhead(six, args.seconds, round(args.warm_up * 1000)))
    with start_fleet(folder / "one", env, 1, latency_ms=LATENCY_MS) as one:
        squeezed = asyncio.run(overload(one, args.seconds * 2, round(args.warm_up * 1000)))
    fifo = seed_fifo(env, folder, args.seconds * 2)
    figures = {"fleet_6x140ms": fleet, "overload_13.7_to_1": squeezed, "seed_fifo_13.7_to_1": fifo,
               "age_p99_ratio_fifo_to_framewatch": round(fifo["age_at_dispatch_ms_p99"]
                                                         / max(squeezed["age_at_dispatch_ms_p99_steady"], 1), 1)}
    print_table([
        ("detector utilisation (achieved / capacity)", fleet["utilisation"], ""),
        ("achieved frames/s (capacity 42.9)", fleet["achieved_fps"], ""),
        ("pipeline overhead at 30 frames/s, p50 (ms)", fleet["overhead_at_30fps_ms_p50"], "seed best: 12"),
        ("pipeline overhead at 30 frames/s, p99 (ms)", fleet["overhead_at_30fps_ms_p99"], ""),
        ("  frame sent -> dispatched p50 / p99 (ms)",
         f"{fleet['sent_to_dispatched_ms_p50']} / {fleet['sent_to_dispatched_ms_p99']}", ""),
        ("  HTTP round trip beyond the service p50 / p99 (ms)",
         f"{fleet['http_beyond_service_ms_p50']} / {fleet['http_beyond_service_ms_p99']}", ""),
        ("  worker event-loop lag p50 / p99 (ms)",
         f"{fleet['event_loop_lag_ms_p50']} / {fleet['event_loop_lag_ms_p99']}", ""),
        ("  worker garbage-collection pauses over 10 ms", fleet["gc_pauses_over_10ms"], ""),
        ("overload 13.7:1 age at dispatch p50 (ms)", squeezed["age_at_dispatch_ms_p50"], ""),
        ("overload 13.7:1 age at dispatch p99 (ms)", squeezed["age_at_dispatch_ms_p99_steady"], ""),
        ("  the same with start and drain (ms)", squeezed["age_at_dispatch_ms_p99"], ""),
        ("  the oldest frame dispatched (ms)", squeezed["age_at_dispatch_ms_max"], "<= max_frame_age_ms"),
        ("overload frames inferred / dropped / failed",
         f"{squeezed['inferred']}/{squeezed['dropped']}/{squeezed['failed']}", ""),
        ("overload frames without an outcome", squeezed["unaccounted"], "0"),
        ("overload most frames waiting", squeezed["most_waiting"], "<= 14 cameras"),
        ("seed FIFO, same overload: age at dispatch p50 (ms)", fifo["age_at_dispatch_ms_p50"], ""),
        ("seed FIFO, same overload: age at dispatch p99 (ms)", fifo["age_at_dispatch_ms_p99"], ""),
        ("  FIFO p99 / framewatch p99", figures["age_p99_ratio_fifo_to_framewatch"], ""),
    ])
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
