"""Reviews on a running worker: verdicts one by one and in bulk (the latest counts) with the token's name and the
time, the filters by review, missed events, precision per rule and camera, the reviews metric, and `framewatch truth
export` feeding `framewatch replay --from-topic --truth`, whose scores are the reviews'."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from framewatch.ops.load import Fleet, FrameLoad, start_fleet
from framewatch.ops.scoring import load_truth
from tests.browser import dump_dom
from tests.conftest import ROOT, SAMPLE_JPEG
from tests.test_alert_path import alerting_config, settle_stored

TOKEN = "t0ken-" + uuid.uuid4().hex
ALICE = "alice-" + uuid.uuid4().hex
RULE = "area_intrusion"


def call(fleet: Fleet, path: str, body: Any = None, token: str = TOKEN, **params: Any) -> httpx.Response:
    """A GET, or with `body` a POST of it as JSON."""
    url = f"http://127.0.0.1:{fleet.run.config.framewatch.worker_web_port}{path}"
    headers = {"Authorization": f"Bearer {token}"}
    if body is None:
        return httpx.get(url, params=params, headers=headers, timeout=10)
    return httpx.post(url, json=body, headers=headers, timeout=10)


def ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def reviews_counted(fleet: Fleet) -> dict[str, float]:
    """framewatch_reviews_total of the area intrusion task type, by verdict."""
    text = httpx.get(fleet.run.metrics_url, timeout=10).text
    return {s.labels["verdict"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "framewatch_reviews_total" and s.labels["task_type"] == RULE}


def framewatch(fleet: Fleet, *args: str) -> str:
    """What the command printed on standard output; it must succeed."""
    done = subprocess.run([sys.executable, "-m", "framewatch.cli", *args, "-c", str(fleet.run.config_path)],
                          capture_output=True, text=True, cwd=ROOT, env=fleet.run.env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def review_the_camera(fleet: Fleet, alerts: list[dict[str, Any]]) -> None:
    """The oldest alert false (alice's token), the next `reviewed` then true in bulk with the others (the single
    token), the newest left unreviewed; each review records its token's name and its time."""
    before = datetime.now(UTC)
    oldest, *middle, _ = [a["alert_id"] for a in reversed(alerts)]
    one = call(fleet, f"/api/alerts/{oldest}/review", {"verdict": "false"}, token=ALICE)
    assert one.status_code == 200, one.text
    assert call(fleet, f"/api/alerts/{middle[0]}/review", {"verdict": "reviewed"}).status_code == 200
    stranger = str(uuid.uuid4())
    bulk = call(fleet, "/api/reviews", {"verdict": "true", "alert_ids": [*middle, stranger]})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["unknown"] == [stranger]
    assert {r["alert_id"] for r in bulk.json()["reviewed"]} == set(middle)
    assert {(r["verdict"], r["reviewer"]) for r in bulk.json()["reviewed"]} == {("true", "api")}
    after = datetime.now(UTC)
    review = call(fleet, f"/api/alerts/{oldest}").json()["review"]
    assert (review["verdict"], review["reviewer"]) == ("false", "alice")
    assert before <= datetime.fromisoformat(review["reviewed_at"]) <= after


def shows_verdicts_and_precision(fleet: Fleet, camera: str, alerts: list[dict[str, Any]], figures: dict[str, Any],
                                 profile: Path) -> None:
    """The dashboard shows each card's verdict and the camera's line of the precision table."""
    port = fleet.run.config.framewatch.worker_web_port
    page = dump_dom(f"http://127.0.0.1:{port}/?token={TOKEN}&camera_id={camera}", profile)
    shown = dict(re.findall(r'class="alert" data-alert-id="([0-9a-f-]+)" data-key="[^"]*" data-verdict="(\w*)"', page))
    assert shown == {a["alert_id"]: "" if i == 0 else "false" if i == len(alerts) - 1 else "true"
                     for i, a in enumerate(alerts)}
    cells = [camera, RULE, *(figures[k] for k in ("alerts", "reviewed", "confirmed", "false", "missed")),
             f"{figures['precision']:.2f}"]
    assert f'<tr data-camera="{camera}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in page


def test_reviews_precision_and_a_truth_file_the_replay_scores(tmp_path: Path, stack_env: dict[str, str]) -> None:
    prefix = "r" + uuid.uuid4().hex[:6]
    config = alerting_config(prefix, cameras=2) + f'[framewatch.api_tokens]\nalice = "{ALICE}"\n'
    with start_fleet(tmp_path, stack_env, 1, config, latency_ms=10, people=1,
                     extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        load = FrameLoad(fleet.run.config, cameras=2, fps_per_camera=2, prefix=prefix, image=SAMPLE_JPEG)
        sent = asyncio.run(load.run(duration_s=4))
        asyncio.run(settle_stored(fleet.run.config, prefix, sent))  # every frame has a new person: an alert each
        camera = f"{prefix}-000"
        alerts = call(fleet, "/api/alerts", camera_id=camera, limit=500).json()["alerts"]
        count = len(alerts)
        assert count >= 5 and all(a["review"] is None for a in alerts)
        review_the_camera(fleet, alerts)

        def ids(**params: str) -> set[str]:
            return {a["alert_id"] for a in call(fleet, "/api/alerts", camera_id=camera, **params).json()["alerts"]}

        assert ids(verdict="false") == {alerts[-1]["alert_id"]}
        assert ids(reviewed="false") == {alerts[0]["alert_id"]}
        assert len(ids(reviewed="true")) == len(ids(verdict="true")) + 1 == count - 1
        assert call(fleet, f"/api/alerts/{uuid.uuid4()}/review", {"verdict": "true"}).status_code == 404
        assert call(fleet, f"/api/alerts/{alerts[0]['alert_id']}/review", {"verdict": "maybe"}).status_code == 400
        assert call(fleet, "/api/reviews", {"verdict": "true", "alert_ids": []}, token="wrong").status_code == 401

        first, last = ms(alerts[-1]["captured_at"]), ms(alerts[0]["captured_at"])
        missed = call(fleet, "/api/missed", {"camera_id": camera, "captured_at": first + 300, "note": "a second man"},
                      token=ALICE)
        assert missed.status_code == 201, missed.text
        assert {k: missed.json()[k] for k in ("task_type", "rule", "reporter")} == {"task_type": RULE, "rule": RULE,
                                                                                   "reporter": "alice"}
        assert [m["note"] for m in call(fleet, "/api/missed", camera_id=camera).json()["missed"]] == ["a second man"]

        figures = call(fleet, "/api/precision", camera_id=camera).json()
        expected = {"camera_id": camera, "task_type": RULE, "rule": RULE, "alerts": count, "reviewed": count - 1,
                    "confirmed": count - 2, "false": 1, "missed": 1,
                    "precision": round((count - 2) / (count - 1), 3)}
        assert figures["cameras"] == [expected]
        assert figures["rules"] == [{k: v for k, v in expected.items() if k != "camera_id"}]
        assert reviews_counted(fleet) == {"true": count - 2, "false": 1, "reviewed": 1}
        shows_verdicts_and_precision(fleet, camera, alerts, expected, tmp_path)

        span = ["--task", camera, "--since", str(first), "--until", str(last)]
        truth_file = tmp_path / "truth.json"
        # a tolerance under the frame interval (0.5 s): the missed event, 0.3 s in, is found by no alert
        truth_file.write_text(framewatch(fleet, "truth", "export", *span, "--tolerance", "0.1"))
        truth = load_truth(truth_file)
        assert list(truth.rules) == [RULE] and len(truth.events) == count - 1  # the confirmed, and the missed one
        replayed = json.loads(framewatch(fleet, "replay", "--from-topic", *span, "--truth", str(truth_file),
                                         "--json"))
        [score] = replayed["scores"]
        # the same detections through the same rule: the same alerts, found where the reviews confirmed them
        assert (score["alerts"], score["events"], score["matched"]) == (count, count - 1, count - 2), score
        assert score["max_time_error_s"] == 0.0
