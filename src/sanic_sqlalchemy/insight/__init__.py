"""Query insight: what each unit of work asks of the database and how long it takes.

``stats`` holds a unit's counts and times (``unit.stats``), ``watch`` measures every
statement and reports slow and repeated ones, ``callsite`` finds the application's
line that issued a statement, and ``server_timing`` formats the ``Server-Timing``
header.
"""

from .callsite import CallSite, application_call_site
from .server_timing import metric_name, server_timing
from .stats import UnitStats
from .watch import StatementWatch, attach, detach, note_begin

__all__ = [
    "CallSite",
    "StatementWatch",
    "UnitStats",
    "application_call_site",
    "attach",
    "detach",
    "metric_name",
    "note_begin",
    "server_timing",
]
