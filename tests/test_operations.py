"""The operator's view, tested for real: Debian's Prometheus scrapes a running worker and extractor with
`docker/prometheus/rules.yml` loaded. Every dashboard query and rule expression names live metrics and is valid
PromQL, every rule loads, and FramewatchCameraDown fires once a camera's stream is gone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import free_port, start_fleet
from tests.conftest import ROOT, Clips
from tests.test_cameras import publishing

RULES = ROOT / "docker" / "prometheus" / "rules.yml"
RULES_TESTS = ROOT / "docker" / "prometheus" / "rules.test.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "framewatch.json"
METRIC = re.compile(r"\b((?:framewatch|process)_[a-z_]+)\b")


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]


def declared_metrics(exposition: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its TYPE lines (labelled metrics with no sample yet too)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.M):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def test_every_alert_rule_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs it (Debian package prometheus)"
    tested = {case["alertname"] for test in yaml.safe_load(RULES_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == set(rule_expressions()), "every rule has its synthetic series"
    result = subprocess.run([promtool, "test", "rules", RULES_TESTS.name], cwd=RULES.parent, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


class Prometheus:
    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make test` installs it (Debian package prometheus)"
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        if not answer.headers.get("content-type", "").startswith("application/json"):
            answer.raise_for_status()  # plain "Service Unavailable" until its storage is open; errors in JSON say why
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (httpx.HTTPError, AssertionError, KeyError):
                pass
            time.sleep(1)
        raise AssertionError(f"not within {timeout_s:.0f}s: {what}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture
def prometheus_home(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    yield folder


def test_rules_and_dashboard_name_live_metrics_and_camera_down_fires(tmp_path: Path, stack_env: dict[str, str],
                                                                     clips: Clips, prometheus_home: Path) -> None:
    camera = "cam-ops-" + uuid.uuid4().hex[:6]  # the stack's RTSP server serves cam-* paths without credentials
    url = f"rtsp://{stack_env['FRAMEWATCH_RTSP_SERVER']}/{camera}"
    config = f'[[frame_extractor.tasks]]\nid = "{camera}"\ntask_type = "area_intrusion"\nrtsp_url = "{url}"\n' \
             f'interval_ms = 500\n'
    extractor_port = free_port()
    with start_fleet(tmp_path / "fleet", stack_env, 1, config, latency_ms=20, people=1) as fleet, \
            publishing(clips.moving, [url], tmp_path / "publisher.log") as publisher:
        extractor = ServiceProcess("extractor", ["extract", "-c", str(fleet.run.config_path)],
                                   {**fleet.run.env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(extractor_port)},
                                   tmp_path / "logs")
        worker = fleet.run.metrics_url.removeprefix("http://").removesuffix("/metrics")
        prometheus = Prometheus(prometheus_home, {"framewatch-worker": worker,
                                                  "framewatch-extractor": f"127.0.0.1:{extractor_port}"})
        try:
            prometheus.until(lambda: bool(prometheus.api("query", query=f'framewatch_extractor_camera_up{{task="{camera}"}} == 1')["result"]),
                             90, f"camera {camera} streaming, as Prometheus sees it")
            prometheus.until(lambda: prometheus.api("query", query="sum(framewatch_rules_frames_total)")["result"] != [],
                             60, "the worker evaluating frames")
            live = declared_metrics(httpx.get(fleet.run.metrics_url, timeout=10).text)
            live |= declared_metrics(httpx.get(f"http://127.0.0.1:{extractor_port}/metrics", timeout=10).text)
            expressions = [*rule_expressions().values(), *dashboard_expressions()]
            unknown = {name for expr in expressions for name in METRIC.findall(expr)} - live
            assert unknown == set(), f"queries name metrics no process exports: {sorted(unknown)}"
            for expr in dashboard_expressions():
                prometheus.api("query", query=expr)  # valid PromQL, or the API says why
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            assert {r["name"] for r in rules} == set(rule_expressions())
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

            publisher.terminate()  # the camera's stream is gone: the extractor backs off and reconnects in vain
            publisher.wait(10)

            def camera_down_firing() -> bool:
                return any(a["labels"]["alertname"] == "FramewatchCameraDown" and a["labels"].get("task") == camera
                           and a["state"] == "firing" for a in prometheus.api("alerts")["alerts"])
            prometheus.until(camera_down_firing, 150, f"FramewatchCameraDown firing for {camera}")
        finally:
            prometheus.stop()
            extractor.stop()
