"""The alert feed's contract: every message validates against the exported schema, which refuses a message
missing a field and accepts one with a field added later in the same version. Clip messages are a second kind,
told apart by `kind`: an alert message without one (the releases before clips) is still an alert, and a clip
message is no alert to a consumer that validates against the alert's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from framewatch.cli import main
from framewatch.schemas.events import AlertEvent, AlertStored, ClipReady
from framewatch.schemas.feed import AlertMessage, ClipMessage, feed_schemas, read_message
from tests.test_events import frame

ALERT_ID = "4c0b5c1e-6f1a-5d8e-9a57-2d1f3e0f7a11"


def message() -> dict[str, object]:
    f = frame()
    alert = AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                       evidence={"boxes": [[0.1, 0.2, 0.3, 0.4]], "labels": ["person"]}, image_key="alerts/a.jpg")
    loaded: dict[str, object] = json.loads(AlertMessage.of(AlertStored(alert=alert, stored_at=1)).to_bytes())
    return loaded


def clip_message(clip_key: str | None = "clips/cam/20231114/a.mp4", reason: str | None = None) -> dict[str, object]:
    ready = ClipReady(alert_id=ALERT_ID, task_id="cam", camera_id="cam", bucket="b", clip_key=clip_key,
                      start_at=None if clip_key is None else 1_700_000_000_000,
                      end_at=None if clip_key is None else 1_700_000_010_000,
                      clip_bytes=None if clip_key is None else 812_345, reason=reason)
    loaded: dict[str, object] = json.loads(ClipMessage.of(ready, stored_at=1_700_000_011_000).to_bytes())
    return loaded


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(feed_schemas()[name])


def test_the_exported_schema_holds_every_message_and_names_what_is_missing() -> None:
    schema = AlertMessage.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    body = message()
    validator.validate(body)
    assert body["version"] == 1 and body["kind"] == "alert" and body["task_type"] == "area_intrusion"
    validator.validate({**body, "added_in_a_later_release": True})
    without = {k: v for k, v in body.items() if k != "image_key"}
    with pytest.raises(jsonschema.ValidationError, match="'image_key' is a required property"):
        validator.validate(without)


def test_an_alert_message_without_kind_is_still_an_alert() -> None:
    before_clips = {k: v for k, v in message().items() if k != "kind"}
    validator("AlertMessage").validate(before_clips)
    validator("FeedMessage").validate(before_clips)
    read = read_message(json.dumps(before_clips))
    assert isinstance(read, AlertMessage) and read.kind == "alert" and read.alert_id == before_clips["alert_id"]


@pytest.mark.parametrize(("clip_key", "reason", "status"), [
    ("clips/cam/20231114/a.mp4", None, "ready"),
    ("clips/cam/20231114/a.mp4", "camera_moved: no pre-roll", "short"),
    (None, "extractor_stopped", "none")])
def test_a_clip_message_validates_and_says_its_status(clip_key: str | None, reason: str | None, status: str) -> None:
    body = clip_message(clip_key, reason)
    validator("ClipMessage").validate(body)
    validator("FeedMessage").validate({**body, "added_in_a_later_release": True})
    assert (body["version"], body["kind"], body["status"], body["clip_key"], body["reason"]) == (
        1, "clip", status, clip_key, reason)
    read = read_message(json.dumps(body))
    assert isinstance(read, ClipMessage) and read.alert_id == ALERT_ID and read.stored_at == 1_700_000_011_000


def test_a_clip_message_is_no_alert_to_a_consumer_of_alerts() -> None:
    body = clip_message()
    with pytest.raises(jsonschema.ValidationError):
        validator("AlertMessage").validate(body)
    with pytest.raises(ValidationError):
        AlertMessage.model_validate_json(json.dumps(body))
    without_status = {k: v for k, v in body.items() if k != "status"}
    with pytest.raises(jsonschema.ValidationError):
        validator("FeedMessage").validate(without_status)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        read_message(json.dumps({**body, "kind": "review"}))


def test_schemas_export_writes_the_alert_feed_schemas(tmp_path: Path) -> None:
    assert main(["schemas", "export", str(tmp_path)]) == 0

    def exported(name: str) -> Any:
        return json.loads((tmp_path / f"{name}.schema.json").read_text())

    alert = exported("AlertMessage")
    assert alert == AlertMessage.model_json_schema() and "alert_id" in alert["required"]
    assert exported("ClipMessage") == ClipMessage.model_json_schema()
    feed = exported("FeedMessage")
    assert feed["oneOf"] == [{"$ref": "#/$defs/AlertMessage"}, {"$ref": "#/$defs/ClipMessage"}]
    assert {"kind", "status", "clip_key"} <= set(feed["$defs"]["ClipMessage"]["required"])
