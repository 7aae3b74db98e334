"""Debian's Chromium, headless: a page's DOM, or a screenshot, as its scripts leave it after 10 s of Chromium's own
time (its timers run, no waiting); and a Selenium driver of it (Debian's chromium-driver) for tests that click."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService


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


CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver, the same version as its chromium


def webdriver_chrome(profile: Path, window: tuple[int, int] = (1280, 1000),
                     time_zone: str | None = None) -> webdriver.Chrome:
    """A Selenium driver of Debian's Chromium through Debian's chromedriver: headless, no sandbox (tests run as
    root in containers), a profile of its own, never Selenium Manager (no download: the machine may be offline).
    The caller quits it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: `make test` installs it (Debian package chromium)"
    assert CHROMEDRIVER.is_file(), f"{CHROMEDRIVER} is missing: `make test` installs it (Debian package chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"):
        options.add_argument(argument)
    env = {**os.environ, "TZ": time_zone} if time_zone else None
    service = ChromeService(executable_path=str(CHROMEDRIVER), env=env)
    return webdriver.Chrome(options=options, service=service)
