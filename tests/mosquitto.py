"""A real MQTT broker for the bridge tests, Debian's mosquitto, and its `mosquitto_sub` (Debian's
mosquitto-clients) to read what the broker holds and delivers as any other client does."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from framewatch.ops.load import free_port


@dataclass(frozen=True)
class Received:
    retained: bool  # delivered as retained: held by the broker when the subscription began
    topic: str
    payload: str


class Subscription:
    """`mosquitto_sub` on a topic filter: retained messages first, then live ones, for `wait_s` at most;
    `retained_only`: none of the live ones (it stops at the first)."""

    def __init__(self, port: int, topic: str, wait_s: int, retained_only: bool = False) -> None:
        binary = shutil.which("mosquitto_sub")
        assert binary, "mosquitto_sub is missing: `make test` installs it (Debian package mosquitto-clients)"
        only = ["--retained-only"] if retained_only else []
        self.process = subprocess.Popen(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-W", str(wait_s), "-F", "%r %t %p",
             *only], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def take(self, count: int) -> list[Received]:
        """The next `count` messages; fails when the subscription ends before."""
        assert self.process.stdout is not None
        return [self._read(self.process.stdout.readline()) for _ in range(count)]

    def rest(self) -> list[Received]:
        """Every message until the subscription ends (`wait_s` after it began)."""
        out, _ = self.process.communicate()
        return [self._read(line + "\n") for line in out.splitlines()]

    @staticmethod
    def _read(line: str) -> Received:
        assert line.endswith("\n"), "mosquitto_sub ended before the message came"
        retained, topic, payload = line[:-1].split(" ", 2)
        return Received(retained == "1", topic, payload)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.process.kill()
        self.process.wait()


class Mosquitto:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        assert Path(binary).exists(), "mosquitto is missing: `make test` installs it (Debian package mosquitto)"
        self.binary = binary
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def subscribe(self, topic: str, wait_s: int, retained_only: bool = False) -> Subscription:
        return Subscription(self.port, topic, wait_s, retained_only)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()
