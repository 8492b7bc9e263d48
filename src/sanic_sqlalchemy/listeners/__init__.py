"""Listeners: plain callables told when a unit of work begins and ends, when an
on-commit callback raises and when a durable task's run ends.

``db.listen(name, fn)`` / ``@db.listens_for(name)`` register them; the event classes
here (``UnitBegin``, ``UnitEnd``, ``CallbackError``, ``TaskEnd``) are what they are
called with, for annotations.  A database with no listener pays nothing for them: its
units are not even told to look (``registration``).
"""

from ..hooks import TaskOutcome, UnitOutcome
from .dispatch import EVENTS
from .events import CallbackError, Event, TaskEnd, UnitBegin, UnitEnd
from .observed import ObservedUnit
from .registration import Listening

__all__ = [
    "EVENTS",
    "CallbackError",
    "Event",
    "Listening",
    "ObservedUnit",
    "TaskEnd",
    "TaskOutcome",
    "UnitBegin",
    "UnitEnd",
    "UnitOutcome",
]
