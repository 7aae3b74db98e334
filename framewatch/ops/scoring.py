"""Scoring alerts against a ground truth: precision, recall and time error per rule.

A truth file is JSON (schema: `Truth`):

    {"video": "vtest.avi", "note": "who labelled it and how",
     "rules": {"line_crossed": {"until_s": 25}, "loitering": {}},
     "events": [{"rule": "line_crossed", "at_s": 17.2, "tolerance_s": 1.0, "evidence": {"direction": "out"},
                 "note": "a man in a light jacket"}, ...]}

Times are seconds into the clip. `rules` names the rules the file labels, each over a span of the clip (`from_s`,
`until_s`; the whole clip by default): alerts of a rule outside its span, or of a rule the file does not label,
are not scored. An event is found by an alert of its rule within `tolerance_s` of `at_s` whose evidence holds
every key of the event's `evidence`, and, when the event has a `box` (x1, y1, x2, y2, normalised), whose box
centre lies in it. Each alert finds at most one event and each event is found at most once: the pairing that
finds the most events (`rules/pairing.py`, which the candidate difference shares).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from framewatch.errors import describe
from framewatch.rules.pairing import ScoredAlert, TruthEvent, pair
from framewatch.schemas.config import ConfigError


class TruthSpan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    from_s: float = Field(default=0.0, ge=0)
    until_s: float | None = Field(default=None, gt=0)

    def covers(self, at_s: float) -> bool:
        return at_s >= self.from_s and (self.until_s is None or at_s <= self.until_s)


class Truth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    video: str = ""
    note: str = ""
    rules: dict[str, TruthSpan]
    events: list[TruthEvent]

    @model_validator(mode="after")
    def _labelled_rules(self) -> Truth:
        for event in self.events:
            if event.rule not in self.rules:
                raise ValueError(f"event at {event.at_s}s: rule {event.rule!r} is not in `rules`")
        return self


def load_truth(path: Path) -> Truth:
    try:
        return Truth.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the truth file ({error.strerror})") from None
    except ValidationError as error:
        raise ConfigError(f"{path}: not a truth file: {describe(error, 'file')}") from None


@dataclass(frozen=True)
class RuleScore:
    rule: str
    alerts: int
    events: int
    matched: int
    time_errors_s: list[float]

    @property
    def precision(self) -> float | None:
        return self.matched / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.events if self.events else None

    @property
    def mean_time_error_s(self) -> float | None:
        return sum(self.time_errors_s) / len(self.time_errors_s) if self.time_errors_s else None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "alerts": self.alerts, "events": self.events, "matched": self.matched,
                "precision": self.precision, "recall": self.recall, "mean_time_error_s": self.mean_time_error_s,
                "max_time_error_s": max(self.time_errors_s, default=None)}


def score(truth: Truth, alerts: list[ScoredAlert]) -> list[RuleScore]:
    """One score per rule the truth labels, over the span it labels."""
    scores = []
    for rule, span in truth.rules.items():
        events = [e for e in truth.events if e.rule == rule]
        candidates = [a for a in alerts if a.rule == rule and span.covers(a.at_s)]
        owner = pair(events, candidates)
        errors = [round(abs(candidates[j].at_s - events[i].at_s), 3) for j, i in owner.items()]
        scores.append(RuleScore(rule, len(candidates), len(events), len(owner), errors))
    return scores
