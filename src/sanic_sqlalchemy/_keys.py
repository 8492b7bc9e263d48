"""Execution-option keys that several layers share (this module imports nothing).

They mark statements as they pass from the sessions (which set them) through the read
guard and the statement watch (which read them) to the backends (which send some of
them): a key defined here lets each layer name it without importing the others.
"""

from __future__ import annotations

from typing import Final

#: A read that a unit runs on its writing connection: the write engine's read guard
#: checks it, and the statement watch counts it as a read.
READ_OPTION: Final = "sanic_sqlalchemy_read"

#: The library's own statements (the read-only scope around a read in a writing unit,
#: SQLite's BEGIN): ``"read"`` or ``"write"``, the time they add to.  Not statements of
#: the unit, so neither counted nor watched.
OVERHEAD_OPTION: Final = "sanic_sqlalchemy_overhead"

#: A test's outer connection (``testing.rolled_back``) begins with a deferred BEGIN on
#: SQLite, so that code outside the test's units (DDL at server start) is not locked out
#: before the test writes.
DEFERRED_BEGIN: Final = "sanic_sqlalchemy_deferred_begin"

#: ``record_info`` key of a pooled read connection that ran a statement the read guard
#: could not be sure of (SQL text, a function it does not know): the connection is
#: checked for session locks and changed settings before it goes back to the pool.
UNVERIFIED_READ: Final = "sanic_sqlalchemy_unverified_read"
