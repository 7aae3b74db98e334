"""The extractor's clock against the broker's (streams/clock.py), and frame ages judged on the broker's clock."""

from __future__ import annotations

import logging

import asyncio

import orjson
import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import RecordMetadata, TopicPartition
from prometheus_client import REGISTRY

from framewatch.clients.bus import EventProducer, connect_admin, ensure_topics
from framewatch.ops.tasks import cameras_table
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraState, CameraStatus, FrameEvent, now_ms
from framewatch.schemas.topics import FRAMES
from framewatch.streams.clock import BrokerClock, ClockOffset, SkewLog
from tests.test_events import frame


def test_the_offset_comes_from_the_quickest_round_trip() -> None:
    clock = ClockOffset()
    assert clock.offset_ms(0.0) is None
    # broker 5 s ahead; appended mid-way in the quick sample, at the very end of the slow ones
    clock.add(sent_ms=1000, acked_ms=1400, broker_ms=6400, at_s=0.0)  # 400 ms round trip: +5200
    clock.add(sent_ms=2000, acked_ms=2010, broker_ms=7005, at_s=1.0)  # 10 ms: +5000
    clock.add(sent_ms=3000, acked_ms=3300, broker_ms=8300, at_s=2.0)  # 300 ms: +5150
    assert clock.offset_ms(3.0) == 5000


def test_an_upload_backlog_does_not_look_like_skew() -> None:
    """Frames captured long before they are sent (a slow store) say nothing: only the send's round trip counts."""
    clock = ClockOffset()
    for i in range(10):
        sent = 10_000 + i * 1000  # each frame waited seconds for its upload; the clocks agree
        clock.add(sent_ms=sent, acked_ms=sent + 20, broker_ms=sent + 10, at_s=float(i))
    assert clock.offset_ms(10.0) == 0


def test_old_and_surplus_samples_are_forgotten() -> None:
    """A clock stepped by NTP is believed once its quick samples from before the step have aged out."""
    clock = ClockOffset(kept=3, max_age_s=60)
    clock.add(sent_ms=0, acked_ms=2, broker_ms=5001, at_s=0.0)  # +5000, 2 ms: the quickest
    clock.add(sent_ms=100, acked_ms=120, broker_ms=110, at_s=30.0)  # after the step: 0, 20 ms
    assert clock.offset_ms(59.0) == 5000
    assert clock.offset_ms(61.0) == 0
    for i in range(3):
        clock.add(sent_ms=200 + i, acked_ms=250 + i, broker_ms=-775 + i, at_s=62.0)  # -1000, 50 ms each
    assert clock.offset_ms(62.0) == -1000  # the 20 ms sample was pushed out by three newer ones


def test_a_round_trip_the_clock_stepped_through_is_ignored() -> None:
    clock = ClockOffset()
    clock.add(sent_ms=5000, acked_ms=4000, broker_ms=4500, at_s=0.0)
    assert clock.offset_ms(0.0) is None


def delivered(timestamp: int | None, timestamp_type: int = 1) -> RecordMetadata:
    tp = TopicPartition("fw.frames", 0)
    return RecordMetadata("fw.frames", 0, tp, 0, timestamp, timestamp_type, 0)


def exported(extractor: str) -> float | None:
    return REGISTRY.get_sample_value("framewatch_extractor_clock_skew_seconds", {"extractor": extractor})


def test_the_broker_clock_reads_only_log_append_times() -> None:
    clock = BrokerClock("edge-test-1")
    clock.observe(1000, 1010, delivered(999_999, timestamp_type=0))  # CreateTime: the producer's own stamp
    clock.observe(1000, 1010, delivered(None))
    assert (clock.offset_ms, clock.skew_ms, exported("edge-test-1")) == (0, None, None)  # unmeasured, not 0
    clock.observe(1000, 1010, delivered(6005))
    assert (clock.offset_ms, clock.skew_ms, exported("edge-test-1")) == (5000, -5000, -5.0)  # 5 s behind


def test_the_skew_is_logged_once_when_it_is_over_a_second(caplog: pytest.LogCaptureFixture) -> None:
    skew_log = SkewLog("edge-1")
    with caplog.at_level(logging.INFO, logger="framewatch.extractor"):
        for skew in (300, -5000, -5100, -4900, -5050):  # within a second, then 5 s behind and wobbling
            skew_log.update(skew)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "edge-1" in caplog.text and "-5.0s off the broker's" in caplog.text
        skew_log.update(-8000)  # moved by more than a second: said again
        skew_log.update(-900)  # under a second, but not yet back to normal
        skew_log.update(200)
        skew_log.update(4000)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO", "WARNING"]
    assert "+4.0s" in caplog.records[-1].getMessage()


def test_a_frame_age_is_on_the_broker_clock() -> None:
    behind = frame(captured_at=1_000_000).model_copy(update={"clock_offset_ms": 5000})  # stamped 5 s behind
    assert behind.captured_on_broker_clock == 1_005_000
    assert behind.age_ms(now=1_006_000) == 1000
    assert frame(captured_at=1_000_000).age_ms(now=1_006_000) == 6000
    assert 0 <= frame(captured_at=now_ms()).age_ms() < 1000


def test_a_frame_event_without_an_offset_still_decodes() -> None:
    old = orjson.loads(frame().to_bytes())
    del old["clock_offset_ms"]  # a record sent before the field existed
    assert FrameEvent.decode(orjson.dumps(old)).clock_offset_ms == 0


def test_framewatch_cameras_shows_the_skew_and_ages_on_the_broker_clock() -> None:
    now = now_ms()
    behind = CameraStatus(camera_id="gate", extractor="edge-1", state=CameraState.STREAMING, fps_in=5, fps_out=2,
                          interval_ms=500, last_frame_at=now - 5000 - 300, clock_skew_ms=-5000,
                          emitted_at=now - 5000 - 1000)  # both stamped by a clock 5 s behind
    unmeasured = behind.model_copy(update={"camera_id": "yard", "clock_skew_ms": None, "last_frame_at": None,
                                           "emitted_at": now})
    header, *_, gate, yard = cameras_table([behind, unmeasured])
    assert "clock skew" in header
    assert "streaming" in gate and "-5.0s" in gate and "0.3s" in gate  # not `unknown`, not 5.3 s old
    assert " - " in yard


def test_framewatch_cameras_shows_no_negative_age_for_a_recording_read_fast() -> None:
    now = now_ms()
    ahead = CameraStatus(camera_id="clip", extractor="edge-1", state=CameraState.STREAMING, fps_in=50, fps_out=50,
                         interval_ms=100, last_frame_at=now + 13_200, emitted_at=now)  # 13.2 s into the future
    _, *_, clip = cameras_table([ahead])
    assert "0.0s" in clip and "-13" not in clip


async def topic_settings(config: Config, topic: str) -> dict[str, str]:
    admin = await connect_admin(config)
    try:
        [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    return {name: value for name, value, *_ in described.resources[0][4]}


def test_an_existing_frames_topic_gets_the_broker_append_time_and_keeps_its_settings(stack_config: Config) -> None:
    """fw.frames made before it carried the broker's clock (or by another tool) is changed in place."""
    topic = stack_config.topic(FRAMES.name)

    async def scenario() -> tuple[dict[str, str], RecordMetadata]:
        admin = await connect_admin(stack_config)
        try:
            await admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"retention.ms": "4321000"})])
        finally:
            await admin.close()
        await ensure_topics(stack_config)
        producer = EventProducer(stack_config)
        await producer.start()
        try:
            return await topic_settings(stack_config, topic), await producer.send(FRAMES, frame())
        finally:
            await producer.stop()

    settings, delivered = asyncio.run(scenario())
    assert settings["message.timestamp.type"] == "LogAppendTime"
    assert settings["retention.ms"] == "4321000"  # an operator's setting survives the change
    assert delivered.timestamp_type == 1 and abs(delivered.timestamp - now_ms()) < 10_000
