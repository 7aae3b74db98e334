"""Reviews without the stack: precision from reviews, the alert filters by review, the bodies of the review and
missed-event POSTs, and which token's name a review records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from framewatch.agents.api.tokens import ApiTokens, WrongToken
from framewatch.schemas.config import FramewatchSettings, load_config
from framewatch.schemas.queries import (
    AlertQuery,
    BadQuery,
    BulkReviewBody,
    MissedEventBody,
    MissedQuery,
    PrecisionQuery,
    ReviewBody,
    Verdict,
    parse_body,
    precision_tables,
)
from framewatch.schemas.tasks import TaskType


def alert_counts(camera: str, alerts: int, reviewed: int, confirmed: int, false: int) -> dict[str, Any]:
    return {"camera_id": camera, "task_type": "area_intrusion", "rule": "area_intrusion", "alerts": alerts,
            "reviewed": reviewed, "confirmed": confirmed, "false": false}


def missed_count(camera: str, missed: int) -> dict[str, Any]:
    return {"camera_id": camera, "task_type": "area_intrusion", "rule": "area_intrusion", "missed": missed}


def test_precision_is_confirmed_over_judged_per_camera_and_per_rule() -> None:
    rules, cameras = precision_tables(
        [alert_counts("gate", 5, 4, 3, 1), alert_counts("yard", 2, 1, 0, 0)],
        [missed_count("yard", 2), missed_count("dock", 1)])
    by_camera = {p.camera_id: p.answer() for p in cameras}
    assert [p.camera_id for p in cameras] == ["dock", "gate", "yard"]
    assert by_camera["gate"] == {"camera_id": "gate", "task_type": "area_intrusion", "rule": "area_intrusion",
                                 "alerts": 5, "reviewed": 4, "confirmed": 3, "false": 1, "missed": 0,
                                 "precision": 0.75}
    assert by_camera["yard"]["precision"] is None  # reviewed, but nothing judged true or false
    assert (by_camera["yard"]["missed"], by_camera["dock"]["alerts"], by_camera["dock"]["missed"]) == (2, 0, 1)
    [rule] = [p.answer() for p in rules]
    assert "camera_id" not in rule
    assert (rule["alerts"], rule["reviewed"], rule["confirmed"], rule["false"], rule["missed"]) == (7, 5, 3, 1, 3)
    assert rule["precision"] == 0.75


def test_precision_of_two_thirds_is_rounded() -> None:
    [rule], _ = precision_tables([alert_counts("gate", 3, 3, 2, 1)], [])
    assert rule.precision == 0.667


def test_alert_filters_by_review_and_verdict() -> None:
    where, args = AlertQuery.from_params({"reviewed": "false", "camera_id": "gate"}).where()
    assert where == ("camera_id = $1 AND NOT EXISTS (SELECT 1 FROM alert_reviews r WHERE r.namespace = "
                     "alerts.namespace AND r.alert_id = alerts.alert_id)")
    assert args == ["gate"]
    where, args = AlertQuery.from_params({"reviewed": "true", "verdict": "false",
                                          "since": "2026-12-05T00:00:00Z"}).where()
    assert where.count("EXISTS") == 2 and "NOT EXISTS" not in where
    assert "r.verdict = $1) AND captured_at >= $2" in where
    assert args == ["false", datetime(2026, 12, 5, tzinfo=UTC)]
    assert AlertQuery.from_params({}).where() == ("TRUE", [])


@pytest.mark.parametrize(("params", "named"), [({"verdict": "maybe"}, "verdict"),
                                               ({"reviewed": "perhaps"}, "reviewed")])
def test_bad_review_filters_name_the_parameter(params: dict[str, str], named: str) -> None:
    with pytest.raises(BadQuery, match=rf"^{named}: "):
        AlertQuery.from_params(params)


def test_missed_and_precision_queries_filter_as_alerts_do() -> None:
    missed = MissedQuery.from_params({"camera_id": "gate", "task_type": "区域入侵", "limit": "5"})
    assert missed.where() == ("camera_id = $1 AND task_type = $2", ["gate", "area_intrusion"])
    assert missed.limit == 5
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert PrecisionQuery.from_params({"until": "0"}).where() == ("captured_at < $1", [epoch])
    with pytest.raises(BadQuery, match="^limit: "):
        PrecisionQuery.from_params({"limit": "5"})  # precision covers every row: no paging


def test_review_bodies_are_checked_naming_the_field() -> None:
    assert parse_body(ReviewBody, b'{"verdict": "false"}').verdict is Verdict.FALSE
    ids = [uuid.uuid4() for _ in range(2)]
    bulk = parse_body(BulkReviewBody, f'{{"verdict": "true", "alert_ids": ["{ids[0]}", "{ids[1]}"]}}'.encode())
    assert bulk.alert_ids == ids
    for body, named in [(b'{"verdict": "maybe"}', "verdict"), (b'{"verdict": "true", "who": "me"}', "who"),
                        (b"not json", "body"), (b'{"verdict": "true", "alert_ids": []}', "alert_ids"),
                        (b'{"verdict": "true", "alert_ids": ["x"]}', "alert_ids.0")]:
        with pytest.raises(BadQuery, match=rf"^{named}: "):
            parse_body(BulkReviewBody if b"alert_ids" in body else ReviewBody, body)
    many = [str(uuid.uuid4()) for _ in range(501)]
    with pytest.raises(BadQuery, match="^alert_ids: "):
        parse_body(BulkReviewBody, ('{"verdict": "true", "alert_ids": ["' + '", "'.join(many) + '"]}').encode())


def test_a_missed_event_takes_epoch_ms_or_iso_times_and_task_type_aliases() -> None:
    event = parse_body(MissedEventBody, b'{"camera_id": "gate", "captured_at": 1796190000500, "task_type": "\xe5\x8c'
                                        b'\xba\xe5\x9f\x9f\xe5\x85\xa5\xe4\xbe\xb5", "note": "a man at the door"}')
    assert event.captured_at == datetime.fromtimestamp(1796190000.5, tz=UTC)
    assert event.task_type is TaskType.AREA_INTRUSION and event.rule is None
    iso = parse_body(MissedEventBody, b'{"camera_id": "gate", "captured_at": "2026-12-05T02:00:00"}')
    assert iso.captured_at == datetime(2026, 12, 5, 2, tzinfo=UTC)  # naive means UTC, as the query parameters
    for body, named in [(b'{"camera_id": "gate", "captured_at": "noon"}', "captured_at"),
                        (b'{"camera_id": "gate", "captured_at": true}', "captured_at"),
                        (b'{"camera_id": "", "captured_at": 1}', "camera_id"),
                        (b'{"camera_id": "gate"}', "captured_at"),
                        (b'{"camera_id": "gate", "captured_at": 1, "task_type": "juggling"}', "task_type")]:
        with pytest.raises(BadQuery, match=rf"^{named}: "):
            parse_body(MissedEventBody, body)


def test_a_review_records_the_name_of_the_token_it_came_with() -> None:
    assert ApiTokens.of(FramewatchSettings()).name_of("") == "anonymous"
    single = ApiTokens.of(FramewatchSettings(api_token=SecretStr("s3cret")))
    assert single.name_of("Bearer s3cret") == "api"
    named = ApiTokens.of(FramewatchSettings(api_token=SecretStr("s3cret"),
                                            api_tokens={"alice": SecretStr("a-token"), "bob": SecretStr("b-token")}))
    assert [named.name_of(f"Bearer {t}") for t in ("a-token", "b-token", "s3cret")] == ["alice", "bob", "api"]
    for wrong in ("", "Bearer ", "Bearer a-tokenX", "a-token"):
        with pytest.raises(WrongToken):
            named.name_of(wrong)


@pytest.mark.parametrize(("tokens", "problem"), [({"api": "x"}, "not api or anonymous"),
                                                 ({"anonymous": "x"}, "not api or anonymous"),
                                                 ({"al ice": "x"}, "a name is letters"),
                                                 ({"alice": ""}, "the token is empty"),
                                                 ({"alice": "x", "bob": "x"}, "share a token")])
def test_bad_named_tokens_are_refused(tokens: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FramewatchSettings(api_tokens={name: SecretStr(token) for name, token in tokens.items()})


def test_named_tokens_load_from_the_config_file_and_stay_masked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[framewatch.api_tokens]\nalice = "a-token"\n', encoding="utf-8")
    config, ignored = load_config(path, environ={})
    assert ignored == []
    assert ApiTokens.of(config.framewatch).name_of("Bearer a-token") == "alice"
    assert "a-token" not in config.model_dump_json()
