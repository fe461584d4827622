"""Majority math, in one place: every count of "enough acceptors" in paxosd asks here.

Paxos's safety rests on one fact: any two majorities of the same voters share an acceptor.
Keeping the arithmetic in one module means a change to it (or a planted bug in it) changes
every counter at once: phase 1 promises, phase 2 votes, read-index echoes, check-quorum,
pre-votes and the membership-change liveness check.
"""

from __future__ import annotations

from collections.abc import Iterable


def majority(voters: int) -> int:
    """How many of ``voters`` acceptors make a majority: any two such sets intersect."""
    assert voters >= 1, "a majority of nobody"
    return voters // 2 + 1


def has_majority(voters: frozenset[int], ayes: Iterable[int]) -> bool:
    """Whether the voters among ``ayes`` are a majority of ``voters`` (others do not count)."""
    return len(voters.intersection(ayes)) >= majority(len(voters))


def nth_highest(values: Iterable[int], voters: int) -> int:
    """The highest value a majority of ``voters`` has reached, given each voter's value
    (0 for a voter that has not answered): the read-index and commit-point rule."""
    ranked = sorted(values, reverse=True)
    need = majority(voters)
    return ranked[need - 1] if len(ranked) >= need else 0
