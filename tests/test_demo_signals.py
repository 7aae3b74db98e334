"""`framewatch demo` stopped by a signal stops its detector and worker too: they lead sessions of their own, so a
signal to the demo (a service manager's SIGTERM, a closed terminal's SIGHUP) reaches them only through it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from framewatch.ops.demo import interrupt_once, stopping_signals
from framewatch.ops.load import free_port
from tests.conftest import ROOT, SAMPLE_CLIP, write_config

STOPPED_WITHIN_S = 40  # the demo gives its children 30 s before it SIGKILLs them, then exits itself
TOKEN = "demo-signals"

# the sample clip read as fast as the detector allows, a frame every 2 s of it: 10 frames
SHORT_DEMO = f"""
[frame_extractor]
realtime = false

[[frame_extractor.tasks]]
id = "plaza"
task_type = "area_intrusion"
rtsp_url = "{SAMPLE_CLIP}"
interval_ms = 2000
region = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
"""


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    log: Path
    worker_port: int
    children: set[tuple[int, int]] = field(default_factory=set)

    def find_children(self) -> set[tuple[int, int]]:
        """What runs under the demo now, remembered: whatever of it is left at the end is killed."""
        self.children = descendants(self.process.pid)
        return self.children

    def wait_for(self, line: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, f"the demo exited ({self.process.returncode}):\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {line!r} within {timeout_s:.0f}s:\n{self.tail()}"
            time.sleep(0.5)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def worker_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_demo(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[bool], Demo]]:
    """Starts `framewatch demo [--keep]` over the short clip, in the test's namespace, on ports of its own; kills
    whatever of it is left at the end."""
    started: list[Demo] = []
    config = write_config(tmp_path / "demo.toml", SHORT_DEMO)

    def start(keep: bool) -> Demo:
        port = free_port()
        env = {**isolated_env, "FRAMEWATCH_WORKER_PORT": str(port), "FRAMEWATCH_DETECTOR_PORT": str(free_port()),
               "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port()), "FRAMEWATCH_API_TOKEN": TOKEN,
               "PYTHONUNBUFFERED": "1"}
        log = tmp_path / f"demo-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "framewatch.cli", "demo", "-c", str(config),
                                        *(["--keep"] if keep else [])], env=env, cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        started.append(Demo(process, log, port))
        return started[-1]

    yield start
    for demo in started:
        demo.process.kill()
        demo.process.wait()
        for pid, started_at in demo.children:
            if start_time(pid) == started_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live process under `root`, from /proc: the start time tells a reused pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = process_stat(stat)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[tuple[int, int]] = set()
    waiting = list(children.get(root, []))
    while waiting:
        pid = waiting.pop()
        started = start_time(pid)
        if started is not None:
            found.add((pid, started))
        waiting.extend(children.get(pid, []))
    return found


def process_stat(path: Path) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None once the process is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None once it is gone or a zombie."""
    fields = process_stat(Path(f"/proc/{pid}/stat"))
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def assert_all_stopped(demo: Demo, children: set[tuple[int, int]], exit_status: int) -> None:
    deadline = time.monotonic() + STOPPED_WITHIN_S
    left = children
    while (left or demo.process.poll() is None) and time.monotonic() < deadline:
        left = {(pid, started) for pid, started in left if start_time(pid) == started}
        time.sleep(0.5)
    assert demo.process.poll() == exit_status, f"the demo: {demo.process.poll()}\n{demo.tail()}"
    assert not left, f"still running {STOPPED_WITHIN_S}s after the signal: {sorted(left)}\n{demo.tail()}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_kept_demo_stopped_by_a_signal_stops_its_worker_and_detector(start_demo: Callable[[bool], Demo],
                                                                      sig: signal.Signals) -> None:
    demo = start_demo(True)  # --keep
    demo.wait_for("[demo] dashboard:", timeout_s=300)
    assert worker_answers(demo.worker_port)
    cameras = httpx.get(f"http://127.0.0.1:{demo.worker_port}/api/cameras", timeout=10,
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()["cameras"]
    assert [c["camera_id"] for c in cameras] == ["plaza"], "the dashboard lists this namespace's cameras only"
    children = demo.find_children()
    assert len(children) >= 2, f"the detector and the worker: {children}"
    demo.process.send_signal(sig)
    assert_all_stopped(demo, children, exit_status=0)


def test_a_demo_stopped_mid_run_stops_its_worker_and_detector(start_demo: Callable[[bool], Demo]) -> None:
    demo = start_demo(False)
    demo.wait_for("[demo] extracting", timeout_s=300)  # the worker is ready: the extractor runs in the demo
    assert worker_answers(demo.worker_port)
    children = demo.find_children()
    assert len(children) >= 2, f"the detector and the worker: {children}"
    demo.process.send_signal(signal.SIGTERM)
    assert_all_stopped(demo, children, exit_status=130)


def test_the_first_stopping_signal_interrupts_and_the_ones_after_it_are_ignored() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with stopping_signals(interrupt_once):
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # while the children stop
            signal.raise_signal(sig)
    assert {sig: signal.getsignal(sig) for sig in before} == before
