"""The worker's consumer group as every member sees it: how many workers it has and where this one stands.

Faust's assignor sends every member, with its own partitions, each member's address and partitions (the changelog
distribution, keyed by each member's canonical URL). Workers often share a canonical URL (the bind host and port:
`http://0.0.0.0:6066` in every container), so each announces its URL tagged with a member id of its own
(`GroupAssignor`, agents/faust_overrides.py); Faust routes by host and port only, so the tag changes nothing else.
The membership is what the last assignment said, kept through rebalances until the next one:
`agents/inference/capacity.py` splits a service's capacity by it while PostgreSQL cannot share the slots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
