"""What every part of the local stack shares: where it lives, how it runs, how it reports."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from framewatch.errors import FramewatchError

LOG_KEPT_BYTES = 64 * 1024 * 1024  # a service's log is cut past this when the service starts


class StackError(FramewatchError, RuntimeError):
    """A part of the local stack could not be installed, started or reached."""


@dataclass(frozen=True)
class StackHome:
    """One folder outside the source tree: downloads and builds under cache/, data and pids under state/."""

    root: Path

    @classmethod
    def default(cls) -> StackHome:
        root = os.environ.get("FRAMEWATCH_HOME") or Path.home() / ".cache" / "framewatch"
        return cls(Path(root).expanduser().resolve())

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def credentials(self) -> dict[str, str]:
        """Passwords for the local stack, generated once and kept (mode 0600) in the state folder."""
        path = self.state / "credentials.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        wanted = {"minio_user": "framewatch", "minio_password": secrets.token_urlsafe(18),
                  "postgres_user": "framewatch", "postgres_password": secrets.token_urlsafe(18),
                  "camera_password": secrets.token_urlsafe(18)}
        if wanted.keys() <= stored.keys():
            return stored
        creds = {**wanted, **stored}  # a stack made before a part was added keeps its passwords
        write_private(path, json.dumps(creds))
        return creds


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read (it holds a password), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(part, 0o600)  # when it existed with another mode
    part.replace(path)


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"'{name}' was not found on PATH; {install_hint}")
    return path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_with_progress(cmd: list[str], what: str, env: dict[str, str] | None = None,
                      cwd: Path | None = None) -> None:
    """Run an install step, streaming its output so a newcomer sees it working."""
    say(f"{what}: {' '.join(cmd)}")
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, cwd=cwd)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}); see the output above")
    say(f"{what}: done in {time.monotonic() - started:.0f}s")


@dataclass
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool


class LocalService(ABC):
    """One real server of the local stack, run as a detached process with a pid file and a log."""

    name: str
    host = "127.0.0.1"
    port: int

    def __init__(self, home: StackHome) -> None:
        self.home = home
        self.data = home.state / self.name
        self.log_path = home.state / "logs" / f"{self.name}.log"
        self.pid_path = home.state / "pids" / f"{self.name}.pid"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def binary(self) -> str:
        """Where a server built from source (MinIO, mediamtx) is cached."""
        return str(self.home.cache / "bin" / self.name)

    @abstractmethod
    def install(self) -> None:
        """Fetch or build what the service needs, once, into the cache."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    def prepare(self) -> None:
        """Initialise the data folder before the first start."""

    def healthy(self) -> bool:
        return port_open(self.host, self.port)

    def environment(self) -> dict[str, str]:
        return {}

    def run_as(self) -> str | None:
        return None

    def identity(self) -> dict[str, Any]:
        """subprocess arguments that run a command as run_as(), with that account's group and no others."""
        account = self.run_as()
        if account is None:
            return {}
        return {"user": account, "group": pwd.getpwnam(account).pw_gid, "extra_groups": []}

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # a pid file that outlived its process (a reboot, a killed session) may name someone else's pid
        return pid if str(self.data).encode() in cmdline else None

    def up(self, wait_s: float = 90.0) -> None:
        if self.pid() is not None and self.healthy():
            say(f"{self.name}: already up at {self.address} (pid {self.pid()})")
            return
        self.wait_up(self.launch(), wait_s)

    def launch(self) -> subprocess.Popen[bytes] | None:
        """Start the server unless it runs already (without waiting for it); the process started, if any."""
        if self.pid() is not None:
            return None
        if port_open(self.host, self.port):
            raise StackError(f"{self.name}: port {self.port} is taken by a process this stack did not start")
        self.install()
        self.data.mkdir(parents=True, exist_ok=True)
        self.prepare()
        return self._spawn()

    def wait_up(self, process: subprocess.Popen[bytes] | None, wait_s: float = 90.0) -> None:
        self._wait_healthy(wait_s, process)
        say(f"{self.name}: up at {self.address} (pid {self.pid()})")

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_log()
        log: IO[bytes] = self.log_path.open("ab")
        env = {**os.environ, **self.environment()}
        process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, **self.identity())
        self.pid_path.write_text(str(process.pid))
        return process

    def _rotate_log(self) -> None:
        """A log past LOG_KEPT_BYTES becomes `<name>.log.1` (the one before is dropped): a broker killed and started
        again by the fault tests on every run wrote gigabytes to a log that was never cut."""
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_KEPT_BYTES:
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))

    def wipe(self) -> None:
        """Deletes the data folder of a stopped service: its next start begins empty."""
        if self.pid() is not None:
            raise StackError(f"{self.name} is running: stop it before deleting its data")
        shutil.rmtree(self.data, ignore_errors=True)

    def _wait_healthy(self, wait_s: float, process: subprocess.Popen[bytes] | None) -> None:
        """Wait for the server we started, or for the one already running (started again if it goes away)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise StackError(f"{self.name} exited with status {process.returncode} while starting; "
                                 f"last lines of {self.log_path}:\n{self.tail()}")
            if process is None and self.pid() is None:
                process = self._spawn()
            if self.healthy():
                return
            time.sleep(0.5)
        raise StackError(f"{self.name} did not answer within {wait_s:.0f}s; see {self.log_path}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def down(self) -> None:
        pid = self.pid()
        if pid is None:
            say(f"{self.name}: not running")
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        say(f"{self.name}: stopped")

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(self.name, self.address, pid, pid is not None and self.healthy())

    @abstractmethod
    def env(self) -> dict[str, str]:
        """Variables that point framewatch and the tests at this service."""
