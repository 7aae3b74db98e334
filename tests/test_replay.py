"""`framewatch replay` and scoring: a recorded clip through the real HOG detector and a task's rule, every frame in
order; other rule settings tried on the cached detections; alerts scored against a truth file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framewatch.ops.demo import ServiceProcess
from framewatch.ops.scoring import ScoredAlert, Truth, load_truth, score
from framewatch.schemas.config import ConfigError
from tests.conftest import ROOT, SAMPLE_CLIP, free_port

DEMO = ROOT / "samples" / "demo.toml"
PLAZA_TRUTH = ROOT / "samples" / "truth" / "plaza-20s.json"


def truth(events: list[dict[str, Any]], **rules: dict[str, float]) -> Truth:
    return Truth.model_validate({"rules": rules or {"line_crossed": {}}, "events": events})


def test_the_pairing_finds_the_most_events_each_alert_finding_one() -> None:
    labelled = truth([{"rule": "line_crossed", "at_s": 10, "tolerance_s": 1, "evidence": {"direction": "out"}},
                      {"rule": "line_crossed", "at_s": 11, "tolerance_s": 1}])
    alerts = [ScoredAlert("line_crossed", 10.8, {"direction": "out"}),  # fits both; closer to the 2nd
              ScoredAlert("line_crossed", 10.2, {"direction": "in"}),  # wrong direction for the 1st: only the 2nd
              ScoredAlert("line_crossed", 30.0, {"direction": "out"})]  # fits nothing
    [line] = score(labelled, alerts)
    assert (line.alerts, line.events, line.matched) == (3, 2, 2)
    assert line.precision == pytest.approx(2 / 3) and line.recall == 1.0
    assert line.time_errors_s == [0.8, 0.8]  # closest-first would pair 10.8 with the 2nd and lose the 1st


def test_a_box_must_hold_the_alerts_box_centre_and_spans_limit_what_is_scored() -> None:
    labelled = truth([{"rule": "loitering", "at_s": 5, "tolerance_s": 2, "box": [0.5, 0.5, 1.0, 1.0]}],
                     loitering={"until_s": 20})
    alerts = [ScoredAlert("loitering", 5, {"box": [0.1, 0.1, 0.3, 0.3]}),
              ScoredAlert("loitering", 6, {"box": [0.6, 0.6, 0.8, 0.9]}),
              ScoredAlert("loitering", 25, {"box": [0.6, 0.6, 0.8, 0.9]}),  # after the labelled span
              ScoredAlert("line_crossed", 5, {})]  # a rule the file does not label
    [loitering] = score(labelled, alerts)
    assert (loitering.alerts, loitering.matched, loitering.recall) == (2, 1, 1.0)


def test_a_bad_truth_file_is_refused_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "truth.json"
    bad.write_text(json.dumps({"rules": {"loitering": {}}, "events": [{"rule": "line_crossed", "at_s": 3}]}))
    with pytest.raises(ConfigError, match="rule 'line_crossed' is not in `rules`"):
        load_truth(bad)
    bad.write_text(json.dumps({"rules": {}, "events": [{"rule": "x", "at": 3}]}))
    with pytest.raises(ConfigError, match=r"truth.json: not a truth file: .*events\.0\.at_s: Field required"):
        load_truth(bad)
    assert load_truth(ROOT / "samples" / "truth" / "vtest.json").events  # the shipped files load
    assert load_truth(PLAZA_TRUTH).events


@pytest.fixture(scope="module")
def detector(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference HOG detector, as a process on a port of its own."""
    port = free_port()
    process = ServiceProcess("detector", ["detector", "-c", str(DEMO), "--port", str(port), "--capacity", "2"],
                             {**stack_env, **_path_env()}, tmp_path_factory.mktemp("detector"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.alive(), process.tail()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    yield url
    process.stop()


def _path_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "FRAMEWATCH_HOME")}


def detector_requests(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return sum(float(line.rsplit(" ", 1)[1]) for line in answer.read().decode().splitlines()
                   if line.startswith("framewatch_detector_requests_total{"))


def replay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framewatch.cli", "replay", *args], env={**env, **_path_env()},
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_clip_is_replayed_scored_and_tried_again_with_other_settings(detector: str, stack_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--detector", detector, "--truth", str(PLAZA_TRUTH), "--json",
                   *cache, env=stack_env)
    assert first.returncode == 0, first.stderr
    run = json.loads(first.stdout)
    assert run["frames"] == 40 and run["failed"] == {}  # 20 s every 500 ms, none lost
    assert run["alerts"] and all(a["rule"] == "area_intrusion" for a in run["alerts"])
    [scored] = run["scores"]
    assert scored["events"] == 7 and scored["recall"] >= 0.5, scored  # HOG on the clip: 6 of 7 when measured
    assert [a["at_s"] for a in run["alerts"]] == sorted(a["at_s"] for a in run["alerts"])

    table = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--detector", detector, "--truth", str(PLAZA_TRUTH), *cache,
                   env=stack_env)
    assert table.returncode == 0, table.stderr
    assert "precision" in table.stdout and f"{len(run['alerts'])} alerts" in table.stdout

    # the same detections, another region, without asking the detector again: nobody in the bottom twentieth
    asked = detector_requests(detector)
    other = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--detector", detector, "--json", *cache,
                   "--settings", "region=[[0, 0.95], [1, 0.95], [1, 1], [0, 1]]", env=stack_env)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["alerts"] == []
    assert detector_requests(detector) == asked

    # no --detector: the services that announce themselves on fw.services, as a worker finds them
    found = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--json", "--no-cache", env=stack_env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["frames"] == 40 and detector_requests(detector) >= asked + 40
    gone = "http://127.0.0.1:9"
    refused = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--detector", gone, *cache, env=stack_env)
    assert refused.returncode == 2, refused.stdout  # another endpoint: not what was cached
    assert "the detector cannot be reached" in refused.stderr and "127.0.0.1:9" in refused.stderr


def test_replay_refuses_what_it_cannot_run_with_a_clear_error(tmp_path: Path) -> None:
    missing = replay(str(tmp_path / "nope.mp4"), "-c", str(DEMO), "--detector", "http://127.0.0.1:9", env={})
    assert missing.returncode == 2 and "nope.mp4: no such video file" in missing.stderr
    no_broker = {"FRAMEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    no_service = replay(str(SAMPLE_CLIP), "-c", str(DEMO), env=no_broker)
    assert no_service.returncode == 2 and "no algorithm service for area_intrusion" in no_service.stderr
    bad_setting = replay(str(SAMPLE_CLIP), "-c", str(DEMO), "--settings", "dwell_sec=-1", env={})
    assert bad_setting.returncode == 2 and "dwell_sec" in bad_setting.stderr
