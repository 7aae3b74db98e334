"""Debian's Chromium, headless: a page's DOM, or a screenshot, as its scripts leave it after 10 s of Chromium's own
time (its timers run, no waiting)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def dump_dom(address: str, profile: Path, time_zone: str | None = None) -> str:
    """The page's DOM; `time_zone`: the browser's (an IANA name), else the machine's."""
    env = {**os.environ, "TZ": time_zone} if time_zone else None
    page = subprocess.run([*headless(profile), "--dump-dom", address],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert page.returncode == 0, page.stderr[-2000:]
    return page.stdout


def screenshot(address: str, profile: Path, path: Path, window: str = "1280,1600") -> None:
    subprocess.run([*headless(profile), f"--window-size={window}", f"--screenshot={path}", address],
                   capture_output=True, timeout=120, check=True)


def headless(profile: Path) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: `make test` installs it (Debian package chromium)"
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000"]
