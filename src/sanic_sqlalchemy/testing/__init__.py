"""A test kit for applications built on sanic-sqlalchemy (and for its own tests).

* ``schema(db, metadata)``: create the tables for a test and drop them afterwards.
* ``checked_out(db)``: how many connections each pool has lent out right now; a test
  that ends with anything but zero has leaked a connection.
* ``wait_until_idle(db)``: wait until every connection is back in its pool.
* ``CheckoutCounter(db)``: counts pool checkouts, to prove a request took none.
* ``StatementLog(db)``: records each SQL statement sent, per engine, to count round
  trips or to see what was sent.
* ``CommitRecorder``: an on-commit callback that remembers what it was called with.
* ``rolled_back``, ``emptied``, ``capture_on_commit``, ``assert_num_queries``,
  ``assert_max_queries``: test isolation, on-commit capture and query counting
  (``isolation``), also as pytest fixtures (``plugin``).
"""

from .isolation import (
    CapturedCallback,
    QueryCountError,
    assert_max_queries,
    assert_num_queries,
    capture_on_commit,
    emptied,
    rolled_back,
)
from .tools import (
    CheckoutCounter,
    CommitRecorder,
    PoolUse,
    StatementLog,
    checked_out,
    schema,
    wait_until_idle,
)

__all__ = [
    "CapturedCallback",
    "CheckoutCounter",
    "CommitRecorder",
    "PoolUse",
    "QueryCountError",
    "StatementLog",
    "assert_max_queries",
    "assert_num_queries",
    "capture_on_commit",
    "checked_out",
    "emptied",
    "rolled_back",
    "schema",
    "wait_until_idle",
]
