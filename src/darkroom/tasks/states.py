"""The task state machine, as data. The store's conditional UPDATEs implement exactly these edges.

pending ──claim──▶ processing ──complete──▶ completed
   ▲                  │  │
   └──lease expired───┘  └──fail / lease expired at attempt limit──▶ failed
"""

from __future__ import annotations

from darkroom.contract import Status

TRANSITIONS: frozenset[tuple[Status, Status]] = frozenset(
    {
        (Status.PENDING, Status.PROCESSING),  # a worker claims it
        (Status.PROCESSING, Status.PENDING),  # its lease expired: another attempt
        (Status.PROCESSING, Status.COMPLETED),  # the worker holding the lease finished it
        (Status.PROCESSING, Status.FAILED),  # the worker failed it, or the attempts ran out
        (Status.PENDING, Status.FAILED),  # refused before any worker ran it (e.g. cancelled)
    }
)


def can_transition(current: Status, target: Status) -> bool:
    return (current, target) in TRANSITIONS
