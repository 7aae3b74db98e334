"""The version of a task's rule: a short hash of the settings that change what the rule decides, carried by every
alert, so an alert says which settings raised it and two alerts of one camera can be told apart across a change.

The rule settings are the `CameraTask` fields the rules read (rules/engine.py, conditions.py, tracking.py):
`task_type`, `region`, `line`, `line_direction`, the watched labels (`labels`, or the type's default: naming the
default explicitly is the same rule), `helmet_labels`, `min_score`, `alert_threshold`, `dwell_sec`, `absence_sec`,
`stationary_sec`, `fall_sec`, `consecutive_frames`, `cooldown_sec`, `clear_sec`, `track_gap_sec`, `track_score`.
Everything else leaves the version as it was: the source and its sampling (`rtsp_url`, `interval_ms`, the ingest
settings), where images go (`output_path`), retention (`max_frame_count`), clips (`clips`, `clip_pre_sec`,
`clip_post_sec`), `enabled`, and `extra_labels` (it only lets more labels be named). Values are hashed with their
defaults filled in, so a default that changes in a release (a different rule) changes the version too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from framewatch.schemas.tasks import CameraTask

RULE_SETTINGS = frozenset({"task_type", "region", "line", "line_direction", "labels", "helmet_labels", "min_score",
                           "alert_threshold", "dwell_sec", "absence_sec", "stationary_sec", "fall_sec",
                           "consecutive_frames", "cooldown_sec", "clear_sec", "track_gap_sec", "track_score"})
VERSION_CHARS = 12


def rule_settings(task: CameraTask) -> dict[str, Any]:
    """The task's rule settings as JSON values, the labels as the rule watches them."""
    settings = task.model_dump(mode="json", include=set(RULE_SETTINGS))
    settings["labels"] = sorted(task.watched)
    return settings


def rule_version(task: CameraTask) -> str:
    """12 hex digits of the SHA-256 of the rule settings (keys sorted): the same settings give the same version
    in every process and release that keeps the rules' defaults."""
    encoded = orjson.dumps(rule_settings(task), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:VERSION_CHARS]
