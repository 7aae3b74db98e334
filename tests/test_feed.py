"""The alert feed's contract: every message validates against the exported schema, which refuses a message
missing a field and accepts one with a field added later in the same version."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from framewatch.cli import main
from framewatch.schemas.events import AlertEvent, AlertStored
from framewatch.schemas.feed import AlertMessage
from tests.test_events import frame


def message() -> dict[str, object]:
    f = frame()
    alert = AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                       evidence={"boxes": [[0.1, 0.2, 0.3, 0.4]], "labels": ["person"]}, image_key="alerts/a.jpg")
    loaded: dict[str, object] = json.loads(AlertMessage.of(AlertStored(alert=alert, stored_at=1)).to_bytes())
    return loaded


def test_the_exported_schema_holds_every_message_and_names_what_is_missing() -> None:
    schema = AlertMessage.model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    body = message()
    validator.validate(body)
    assert body["version"] == 1 and body["task_type"] == "area_intrusion"
    validator.validate({**body, "added_in_a_later_release": True})
    without = {k: v for k, v in body.items() if k != "image_key"}
    with pytest.raises(jsonschema.ValidationError, match="'image_key' is a required property"):
        validator.validate(without)


def test_schemas_export_writes_the_alert_feed_schema(tmp_path: Path) -> None:
    assert main(["schemas", "export", str(tmp_path)]) == 0
    exported = json.loads((tmp_path / "AlertMessage.schema.json").read_text())
    assert exported == AlertMessage.model_json_schema() and "alert_id" in exported["required"]
