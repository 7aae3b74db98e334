"""What a camera's rule remembers between frames: one `RuleState` per task, stored as bytes in a Faust table whose
changelog lets a restarted worker carry on where the last one stopped."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from framewatch.errors import BadInput, describe
from framewatch.schemas.geometry import Box, Point, foot

SEEN_FRAMES = 64  # capture times remembered to recognise a replayed frame


class StateUnreadable(BadInput):
    """A stored rule state that does not decode (corrupt, or written by an incompatible version)."""


class Track(BaseModel):
    """One object followed across frames, with the memory each rule keeps about it."""

    id: str
    label: str
    box: Box
    score: float
    first_seen: int
    last_seen: int
    hits: int = 1
    motion: tuple[float, ...] = ()  # its Kalman filter at `last_seen` (rules/motion.py)
    side: int = 0  # line_crossing: -1 left of the line, 1 right, 0 not yet known
    side_point: Point | None = None  # where the side was last decided
    inside_since: int | None = None  # loitering: entered the region at
    outside_since: int | None = None  # loitering: stepped out at (a short step out keeps the dwell)
    upright_seen: bool = False  # person_fall: stood up at some point
    lying_since: int | None = None
    anchor: Point | None = None  # object_left: where it has stood still since `still_since`
    still_since: int | None = None

    def foot(self) -> Point:
        return foot(self.box)



class Incident(BaseModel):
    opened_at: int
    last_true_at: int
    alerted: bool = False


class Window(BaseModel):
    """The counts of the minute now open, on the stream's own clock."""

    start: int
    samples: int = 0
    people_sum: int = 0
    people_max: int = 0
    crossed_in: int = 0
    crossed_out: int = 0


class Output(BaseModel):
    """A record a frame sent (an alert, a closed window), kept to be sent again if that frame is replayed."""

    captured_at: int
    topic: str
    record: dict[str, Any]


class RuleState(BaseModel):
    tracks: list[Track] = []
    next_track: int = 1
    incidents: dict[str, Incident] = {}
    last_alert: dict[str, int] = {}  # incident key -> capture time of its last alert: the cooldown
    seen: list[int] = []  # capture times of the latest frames, oldest first
    outputs: list[Output] = []
    window: Window | None = None
    present_at: int | None = None  # off_post: the last frame with someone at the post
    streak: int = 0  # smoking: frames in a row with the label
    candidate: int | None = None  # the `since` of the candidate whose state this is; None: the live rule's

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> RuleState:
        if raw is None:
            return cls()
        try:
            return cls.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as error:
            raise StateUnreadable(f"not JSON: {error}") from None
        except ValidationError as error:
            raise StateUnreadable(describe(error, "state")) from None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_defaults=True))

    def remember(self, captured_at: int) -> None:
        self.seen = [*self.seen[-(SEEN_FRAMES - 1):], captured_at]
        self.outputs = [o for o in self.outputs if o.captured_at >= self.seen[0]]

    def promoted(self, live: RuleState) -> RuleState:
        """This candidate's state carried on as the live rule's: its tracks, incidents and frames seen, with the
        live rule's memory of what went out. An incident the live rule alerted on is not alerted again (nor within
        its cooldown); one only the candidate alerted on (in the shadow table) is re-armed, so the feed gets it at
        its next frame; a replayed frame re-sends the live rule's alerts. An incident the live rule alerted on that
        the candidate has not found (yet: a longer dwell, another region) is carried on too, so that the candidate
        finding it before it ends (`clear_sec`) announces nothing again. Incidents match by key (the track), which
        both states share while the candidate changes no tracking setting."""
        incidents = {key: incident for key, incident in live.incidents.items() if incident.alerted}
        incidents.update({key: incident.model_copy(update={"alerted": key in live.incidents
                                                           and live.incidents[key].alerted})
                          for key, incident in self.incidents.items()})
        return self.model_copy(update={"incidents": incidents, "last_alert": dict(live.last_alert),
                                       "outputs": list(live.outputs), "candidate": None})
