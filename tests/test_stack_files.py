"""Files of the local stack that hold passwords are readable by their owner only."""

from __future__ import annotations

import stat
from pathlib import Path

from framewatch.stack.base import StackHome
from framewatch.stack.mediamtx import Mediamtx


def test_credentials_and_the_rtsp_servers_config_are_private(tmp_path: Path) -> None:
    home = StackHome(tmp_path)
    server = Mediamtx(home)
    server.data.mkdir(parents=True)
    server.config_path.write_text("stale")
    server.config_path.chmod(0o644)
    server.prepare()
    for path in (home.state / "credentials.json", server.config_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert home.credentials()["camera_password"] in server.config_path.read_text()
