"""The worker's consumer group as every member sees it: how many workers it has and where this one stands.

Faust's assignor sends every member, with its own partitions, each member's address and partitions (the changelog
distribution, keyed by each member's canonical URL). Workers often share a canonical URL (the bind host and port:
`http://0.0.0.0:6066` in every container), so each announces its URL tagged with a member id of its own; Faust
routes by host and port only, so the tag changes nothing else. The membership is what the last assignment said,
kept through rebalances until the next one: `agents/inference/capacity.py` splits a service's capacity by it while
PostgreSQL cannot share the slots.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import faust
from faust.assignor.partition_assignor import PartitionAssignor
from prometheus_client import Gauge
from yarl import URL

GROUP_MEMBERS = Gauge("framewatch_worker_group_members",
                      "Workers in the consumer group at its last assignment (0: none received yet)")


@dataclass(frozen=True)
class Membership:
    members: int
    rank: int  # this worker's place in an order every member shares, 0 .. members - 1

    def part(self, total: int, turn: int = 0) -> int:
        """This worker's part of `total` split among the members: the parts add up to `total` exactly, whole
        shares first, then one more each to `total % members` members; `turn` rotates which members those are."""
        whole, remainder = divmod(total, self.members)
        return whole + (1 if (self.rank + turn) % self.members < remainder else 0)


def membership_of(addresses: Iterable[str], own: str) -> Membership:
    """The membership of a group whose members announced `addresses`, seen by the member that announced `own`
    (counted in whether or not it is among them: one member too many only makes the parts smaller)."""
    ordered = sorted({*addresses, own})
    return Membership(members=len(ordered), rank=ordered.index(own))


class GroupAssignor(PartitionAssignor):
    """Faust's partition assignor, announcing a member address of its own and keeping the group's membership."""

    def __init__(self, app: faust.App, replicas: int = 0) -> None:
        super().__init__(app, replicas)
        self.member_id = uuid.uuid4().hex[:12]
        self.membership: Membership | None = None  # None until the first assignment

    @classmethod
    def of(cls, app: faust.App) -> GroupAssignor:
        assignor = app.assignor
        assert isinstance(assignor, cls), f"the app's assignor is a {type(assignor).__name__}: see create_app"
        return assignor

    @property
    def _url(self) -> URL:
        url: URL = self.app.conf.canonical_url
        return url.update_query(member=self.member_id)

    def on_assignment(self, assignment: Any) -> None:
        super().on_assignment(assignment)
        self.membership = membership_of(self.changelog_distribution, str(self._url))
        GROUP_MEMBERS.set(self.membership.members)

    def current(self) -> Membership | None:
        return self.membership
