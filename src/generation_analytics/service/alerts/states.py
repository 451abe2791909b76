"""The state machine of one rule: from its state and one evaluation's outcome to its next state, and
whether that is worth a notification. Pure: no clock, no database (tests/test_alerts.py checks it
against a model, step by step).

    breaching      OK, RESOLVED, NO_DATA, ERROR -> PENDING (FIRING at once when pending_for is 0)
                   PENDING -> FIRING once it has been PENDING for pending_for; FIRING stays FIRING
    not breaching  FIRING -> RESOLVED; PENDING, RESOLVED, NO_DATA, ERROR -> OK
    too few samples  any -> NO_DATA        evaluation failed  any -> ERROR

Notified: entering FIRING, RESOLVED or ERROR, and FIRING again every repeat_interval (0: never again).
A condition that comes and goes within pending_for never notifies (flapping is absorbed by PENDING);
NO_DATA is recorded, not notified (quiet hours are not incidents).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from generation_analytics.vocabulary import AlertState


class Outcome(Enum):
    """What one evaluation found."""

    BREACHING = "breaching"
    NOT_BREACHING = "not breaching"
    NO_DATA = "no data"
    ERROR = "error"


NOTIFIED = frozenset({AlertState.FIRING, AlertState.RESOLVED, AlertState.ERROR})


@dataclass(frozen=True)
class Step:
    """The next state, since when it holds, and whether to notify (`repeat`: a reminder, not a change)."""

    state: AlertState
    since: datetime
    notify: bool
    repeat: bool = False

    def changed(self, before: AlertState) -> bool:
        return self.state is not before


def step(
    state: AlertState,
    since: datetime,
    outcome: Outcome,
    *,
    now: datetime,
    pending_for: timedelta,
    repeat_interval: timedelta,
    last_notified_at: datetime | None,
) -> Step:
    """The state after one evaluation at `now` that found `outcome`."""
    if outcome is Outcome.ERROR:
        target = AlertState.ERROR
    elif outcome is Outcome.NO_DATA:
        target = AlertState.NO_DATA
    elif outcome is Outcome.NOT_BREACHING:
        target = AlertState.RESOLVED if state is AlertState.FIRING else AlertState.OK
    elif state is AlertState.FIRING:
        reminder = (
            repeat_interval > timedelta(0)
            and last_notified_at is not None
            and now - last_notified_at >= repeat_interval
        )
        return Step(AlertState.FIRING, since, notify=reminder, repeat=reminder)
    elif state is AlertState.PENDING:
        target = AlertState.FIRING if now - since >= pending_for else AlertState.PENDING
    else:
        target = AlertState.FIRING if pending_for <= timedelta(0) else AlertState.PENDING
    if target is state:
        return Step(state, since, notify=False)
    return Step(target, now, notify=target in NOTIFIED)
