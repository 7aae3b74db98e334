"""`framewatch demo`: the whole pipeline on the bundled clip, against the real local stack, then a summary.

`PipelineRun` is also what the end-to-end tests drive: it starts a detector and a worker as processes, runs the
extractor to the end of its sources, waits until every frame has an outcome and every alert is published, and
reads back what landed in PostgreSQL, MinIO and the alert topic.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import orjson

from framewatch.clients.bus import ensure_topics, read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import load_config
from framewatch.schemas.events import FrameOutcome, Outcome
from framewatch.schemas.feed import kind_of
from framewatch.schemas.stats import WorkerStats
from framewatch.schemas.topics import FRAME_OUTCOMES
from framewatch.stack.base import port_open
from framewatch.streams.extractor import ExtractReport, run_extractor

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "samples" / "demo.toml"


@dataclass
class RunSummary:
    frames_extracted: int = 0
    frame_outcomes: dict[str, int] = field(default_factory=dict)
    stored_alert_ids: list[str] = field(default_factory=list)
    alert_images: dict[str, bool] = field(default_factory=dict)
    published_alert_ids: list[str] = field(default_factory=list)
    clips: int = 0  # alerts whose clip message names a clip
    frames_left: list[str] = field(default_factory=list)
    frame_latency_ms: list[float] = field(default_factory=list)
    alert_latency_ms: list[float] = field(default_factory=list)
    camera_errors: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def percentile(values: list[float], q: float) -> float | None:
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class ServiceProcess:
    """One framewatch process (detector or worker) with its log in the stack's state folder; with `cpus`, it runs
    on those cores only (`taskset`, so that its thread pools are sized and placed from its first instruction);
    `wrapper` is a command it runs under (e.g. `faketime -f -5s`, a host whose clock is behind)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 cpus: Collection[int] = (), wrapper: Sequence[str] = ()) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        pinned = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([*pinned, *wrapper, sys.executable, "-m", "framewatch.cli", *args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        self.send(sig)
        self.reap(time.monotonic() + timeout_s)

    def send(self, sig: int) -> None:
        """`sig` to the process's group (it leads a session of its own, so the signal reaches what it started)."""
        if self.alive():
            os.killpg(self.process.pid, sig)

    def reap(self, deadline: float) -> None:
        """Wait for the process to exit until the monotonic `deadline`, then SIGKILL its group."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class PipelineRun:
    def __init__(self, config_path: Path, env: dict[str, str], log_dir: Path,
                 detectors: list[str] | None = None, services: int = 1,
                 pinning: Mapping[str, Collection[int]] | None = None) -> None:
        """`detectors` is the framewatch command that runs the algorithm services (`services` of them):
        by default the reference HOG detector on $FRAMEWATCH_DETECTOR_PORT (8500). `pinning` names the cores
        the services ("detector") and the first worker ("worker") run on."""
        self.config_path = config_path
        self.env = env
        self.config, _ = load_config(config_path, env)
        self.log_dir = log_dir
        self.processes: list[ServiceProcess] = []
        self.services = services
        self.pinning = pinning or {}
        self.detectors = detectors or ["detector", "--port", env.get("FRAMEWATCH_DETECTOR_PORT", "8500")]

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.config.framewatch.worker_web_port}/api/stats"

    @property
    def auth_headers(self) -> dict[str, str]:
        token = self.config.framewatch.api_token.get_secret_value()
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.config.framewatch.worker_web_port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config.framewatch.worker_web_port}/metrics"

    def start(self, timeout_s: float = 90) -> None:
        port = self.config.framewatch.worker_web_port
        if port_open("127.0.0.1", port):
            raise RuntimeError(f"port {port} is already in use; is another framewatch worker running?")
        args = ["-c", str(self.config_path)]
        self.processes.append(ServiceProcess("detector", [self.detectors[0], *args, *self.detectors[1:]], self.env,
                                             self.log_dir, self.pinning.get("detector", ())))
        self.processes.append(ServiceProcess("worker", ["worker", *args], self.env, self.log_dir,
                                             self.pinning.get("worker", ())))
        self.workers_started = 1
        try:
            self.wait_ready(timeout_s, self.services)
        except RuntimeError:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float, services: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited while starting:\n{process.tail()}")
            stats = self.stats()
            if stats and stats.services_alive >= services and stats.partitions_assigned > 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the worker was not ready within {timeout_s:.0f}s:\n{self.processes[-1].tail()}")

    def restart_worker(self, sig: int = signal.SIGKILL, timeout_s: float = 90) -> None:
        """Stop the worker with `sig` (SIGKILL: a crash) and start a new one; its log is worker-N.log."""
        self.stop_worker(sig)
        self.start_worker(timeout_s)

    def stop_worker(self, sig: int = signal.SIGKILL) -> None:
        """Stop the last worker started with `sig` (SIGKILL: a crash)."""
        self.processes.pop().stop(sig)

    def start_worker(self, timeout_s: float = 90) -> None:
        """Start one more worker and wait until it is ready; its log is worker-N.log."""
        self.workers_started += 1
        self.processes.append(ServiceProcess(f"worker-{self.workers_started}", ["worker", "-c", str(self.config_path)],
                                             self.env, self.log_dir))
        self.wait_ready(timeout_s, self.services)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to every process at once, SIGKILL to those still running after `timeout_s`."""
        for process in reversed(self.processes):
            process.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in reversed(self.processes):
            process.reap(deadline)

    def stats(self) -> WorkerStats | None:
        """The worker's `/api/stats`; None while it does not answer."""
        try:
            request = urllib.request.Request(self.stats_url, headers=self.auth_headers)
            with urllib.request.urlopen(request, timeout=2) as answer:
                return WorkerStats.model_validate_json(answer.read())
        except OSError:
            return None

    async def extract(self) -> ExtractReport:
        return await run_extractor(self.config)

    async def settle(self, frames: int, timeout_s: float = 120) -> None:
        """Wait until every frame has an outcome and the agents downstream have handled each of them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outcomes = await self._outcomes()
            alerts = sum(1 for o in outcomes if o.outcome is Outcome.ALERT)
            stats = self.stats() or WorkerStats()
            if (len(outcomes) >= frames and stats.alerts_published >= alerts
                    and stats.alerts_relocated + stats.relocation_dead_letters >= alerts
                    and stats.frames_deleted + stats.relocation_dead_letters >= len(outcomes)):
                return
            await asyncio.sleep(1)
        raise TimeoutError(f"pipeline not settled within {timeout_s:.0f}s: {len(await self._outcomes())}/{frames} "
                           f"frames have an outcome; worker stats {self.stats()}")

    async def _outcomes(self) -> list[FrameOutcome]:
        records = await read_records(self.config, self.config.topic(FRAME_OUTCOMES.name))
        return [FrameOutcome.decode(r.value) for r in records]

    async def summary(self, report: ExtractReport) -> RunSummary:
        summary = RunSummary(frames_extracted=report.emitted,
                             camera_errors={c.task_id: c.error for c in report.cameras if c.error})
        outcomes = await self._outcomes()
        for outcome in outcomes:
            summary.frame_outcomes[outcome.outcome.value] = summary.frame_outcomes.get(outcome.outcome.value, 0) + 1
            summary.frame_latency_ms.append(outcome.emitted_at - outcome.frame.captured_at)
        frame_ids = [o.frame.frame_id for o in outcomes]
        connection = await asyncpg.connect(self.config.database.dsn.get_secret_value())
        try:
            rows = await connection.fetch(
                "SELECT alert_id::text, image_key, 1000 * extract(epoch FROM stored_at - captured_at) AS latency "
                "FROM alerts WHERE namespace = $1 AND frame_id = ANY($2::uuid[]) ORDER BY captured_at",
                self.config.framewatch.namespace, frame_ids)
        finally:
            await connection.close()
        summary.stored_alert_ids = [r["alert_id"] for r in rows]
        summary.alert_latency_ms = [float(r["latency"]) for r in rows]
        store = ObjectStore(self.config.frame_extractor.minio)
        for row in rows:
            summary.alert_images[row["alert_id"]] = await store.exists(row["image_key"])
        summary.frames_left = await store.list_keys(store.key("frames") + "/")
        wanted = set(summary.stored_alert_ids)
        published = await read_records(self.config, self.config.ai_analysis.mq_topic)
        messages = [orjson.loads(r.value or b"{}") for r in published]
        summary.published_alert_ids = [m.get("alert_id") for m in messages
                                       if kind_of(m) == "alert" and m.get("alert_id") in wanted]
        summary.clips = sum(1 for m in messages if kind_of(m) == "clip" and m.get("clip_key")
                            and m.get("alert_id") in wanted)
        return summary


def _print_summary(summary: RunSummary, run: PipelineRun, elapsed_s: float) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    moved = sum(summary.alert_images.values())
    rows = [
        ("frames extracted", str(summary.frames_extracted)),
        ("frames inferred", str(summary.frames_extracted - summary.frame_outcomes.get("failed", 0))),
        ("frame outcomes", ", ".join(f"{k}={v}" for k, v in sorted(summary.frame_outcomes.items()))),
        ("alerts stored (PostgreSQL)", str(len(summary.stored_alert_ids))),
        ("alert images under alerts/", f"{moved}/{len(summary.alert_images)}"),
        ("alerts published (" + run.config.ai_analysis.mq_topic + ")", str(len(summary.published_alert_ids))),
        ("alerts with a clip under clips/ (a clip message on the feed)", str(summary.clips)),
        ("frame objects left under frames/", str(len(summary.frames_left))),
        ("capture -> outcome p50 / p99", f"{ms(summary.percentile(summary.frame_latency_ms, 50))} / "
                                          f"{ms(summary.percentile(summary.frame_latency_ms, 99))}"),
        ("capture -> alert stored p50 / p99", f"{ms(summary.percentile(summary.alert_latency_ms, 50))} / "
                                               f"{ms(summary.percentile(summary.alert_latency_ms, 99))}"),
        ("wall time", f"{elapsed_s:.1f} s"),
    ]
    print("\nframewatch demo summary")
    for name, value in rows:
        print(f"  {name:38} {value}")
    print("\nsample alerts:")
    for alert_id in summary.stored_alert_ids[:5]:
        print(f"  {alert_id}")


STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stopping_signals(handler: Callable[[int, FrameType | None], Any] | int) -> Iterator[None]:
    """`handler` for SIGINT, SIGTERM and SIGHUP meanwhile."""
    previous = {sig: signal.signal(sig, handler) for sig in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def interrupt_once(signum: int, frame: FrameType | None) -> None:
    """The demo's detector and worker lead sessions of their own, so no signal sent to the demo reaches them: the
    first SIGINT, SIGTERM (a service manager, `kill`) or SIGHUP (a closed terminal) interrupts the demo as Ctrl-C
    does, and its `finally` stops them; the signals after it are ignored, so they cannot cut that stop short."""
    for sig in STOPPING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_demo(keep_stack: bool = True, keep_running: bool = False, config_path: Path = DEMO_CONFIG) -> int:
    """The sample clip (or `config_path`'s tasks) through the whole pipeline; with `keep_running`, the worker and
    detector stay up afterwards (the dashboard keeps answering) until Ctrl-C, SIGTERM or SIGHUP. The namespace is
    $FRAMEWATCH_NAMESPACE's, else a new one."""
    from framewatch.stack import LocalStack

    with stopping_signals(interrupt_once):
        stack = LocalStack()
        stack.up()
        env = {**os.environ, **stack.env()}
        env.setdefault("FRAMEWATCH_NAMESPACE", f"demo-{int(time.time())}")
        env.setdefault("FRAMEWATCH_MINIO_BUCKET", f"framewatch-{env['FRAMEWATCH_NAMESPACE']}")
        run = PipelineRun(config_path, env, stack.home.state / "logs" / env["FRAMEWATCH_NAMESPACE"])
        try:
            summary = _run_pipeline(run, keep_running)
        except KeyboardInterrupt:
            print("\n[demo] interrupted" if not keep_running else "\n[demo] stopping", flush=True)
            return 130 if not keep_running else 0
        finally:
            with stopping_signals(signal.SIG_IGN):
                run.stop()
                if not keep_stack:
                    stack.down()
    print(f"\nThe dashboard was at {run.dashboard_url} (`framewatch demo --keep` keeps it up). The detector and "
          f"worker have stopped; the local stack {'is still running' if keep_stack else 'stopped'} "
          f"(framewatch stack status / framewatch stack down).")
    ok = (summary.stored_alert_ids and all(summary.alert_images.values())
          and sorted(summary.published_alert_ids) == sorted(summary.stored_alert_ids))
    return 0 if ok else 1


def _run_pipeline(run: PipelineRun, keep_running: bool) -> RunSummary:
    """Start the detector and worker, extract, settle, print the summary; with `keep_running`, then wait for a
    signal."""
    started = time.monotonic()
    asyncio.run(ensure_topics(run.config))
    print(f"[demo] starting detector and worker (namespace {run.config.framewatch.namespace}, logs in "
          f"{run.log_dir})", flush=True)
    run.start()
    print(f"[demo] worker metrics: {run.metrics_url}   stats: {run.stats_url}", flush=True)
    print("[demo] extracting the sample clip at its own pace ...", flush=True)
    report = asyncio.run(run.extract())
    asyncio.run(run.settle(report.emitted))
    summary = asyncio.run(run.summary(report))
    print(f"[demo] last metrics read at {time.strftime('%H:%M:%S')}:")
    with urllib.request.urlopen(run.metrics_url, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("framewatch_") and ("_total" in line or "_up " in line or "_alive " in line):
                print(f"  {line}")
    _print_summary(summary, run, time.monotonic() - started)
    if keep_running:
        print(f"\n[demo] dashboard: {run.dashboard_url}  (the worker and detector keep running: Ctrl-C or SIGTERM "
              f"stops them)", flush=True)
        while True:
            time.sleep(3600)
    return summary
