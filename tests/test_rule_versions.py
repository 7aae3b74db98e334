"""What raised an alert: the version of the rule settings (stable, moved by a rule setting and by nothing else), and
the detector and model, from the service's answer to the alert, its row and its feed message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from framewatch.clients.database import ALERT_COLUMNS, alert_row
from framewatch.rules.engine import evaluate
from framewatch.rules.versions import RULE_SETTINGS, rule_version
from framewatch.schemas.contract import InferResponse
from framewatch.schemas.events import AlertEvent, AlertStored
from framewatch.schemas.feed import AlertMessage
from framewatch.schemas.tasks import CameraTask
from tests.test_rules import LOWER_HALF, Camera, person, task


def test_the_same_settings_give_the_same_version_in_any_order_and_with_defaults_named() -> None:
    version = rule_version(task(region=LOWER_HALF))
    assert len(version) == 12 and int(version, 16) >= 0
    assert rule_version(CameraTask.model_validate({"rtsp_url": "x", "region": LOWER_HALF, "task_type": "area_intrusion",
                                                   "id": "cam"})) == version
    assert rule_version(task(region=LOWER_HALF, cooldown_sec=10.0, labels=["person"])) == version


@pytest.mark.parametrize(("setting", "value"), [
    ("region", [(0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)]), ("labels", ["person", "car"]), ("min_score", 0.4),
    ("cooldown_sec", 30), ("clear_sec", 5), ("track_gap_sec", 4), ("track_score", 0.6), ("dwell_sec", 12),
    ("task_type", "loitering")])
def test_a_rule_setting_changes_the_version(setting: str, value: Any) -> None:
    assert setting in RULE_SETTINGS
    assert rule_version(task(**{"region": LOWER_HALF, setting: value})) != rule_version(task(region=LOWER_HALF))


@pytest.mark.parametrize(("setting", "value"), [
    ("rtsp_url", "rtsp://other/stream"), ("interval_ms", 250), ("enabled", False), ("clips", False),
    ("clip_pre_sec", 2), ("clip_post_sec", 9), ("output_path", "elsewhere"), ("change_gate", True),
    ("max_frame_count", 5), ("extra_labels", ["forklift"])])
def test_a_setting_outside_the_rule_leaves_the_version(setting: str, value: Any) -> None:
    assert setting not in RULE_SETTINGS
    assert rule_version(task(**{"region": LOWER_HALF, setting: value})) == rule_version(task(region=LOWER_HALF))


def test_an_alert_carries_its_version_detector_and_model_to_its_row_and_feed_message() -> None:
    camera = Camera(region=LOWER_HALF)
    event = camera.event(0, person(0.5, 0.9)).model_copy(update={"service_id": "hog-1", "model": "hog-opencv-4"})
    [alert] = evaluate(camera.task, camera.state, event, "alerts").alerts
    assert (alert.rule_version, alert.detector, alert.model) == (rule_version(camera.task), "hog-1", "hog-opencv-4")
    row = dict(zip(ALERT_COLUMNS, alert_row("ns", alert), strict=True))
    assert (row["rule_version"], row["detector"], row["model"]) == (alert.rule_version, "hog-1", "hog-opencv-4")
    message = json.loads(AlertMessage.of(AlertStored(alert=alert, stored_at=1)).to_bytes())
    assert (message["rule_version"], message["detector"], message["model"]) == (alert.rule_version, "hog-1",
                                                                                "hog-opencv-4")


def test_records_and_answers_from_before_versions_still_decode() -> None:
    alert = Camera(region=LOWER_HALF).see(0, person(0.5, 0.9)).alerts[0]
    before = {k: v for k, v in alert.model_dump(mode="json").items() if k not in {"rule_version", "detector", "model"}}
    old = AlertEvent.model_validate(before)
    assert (old.rule_version, old.detector, old.model) == (None, None, None)
    assert InferResponse.model_validate_json('{"results": [], "inference_ms": 3}').model is None
