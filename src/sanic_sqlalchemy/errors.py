"""The exception tree of sanic-sqlalchemy.

Every error the library raises on purpose derives from ``SanicSQLAlchemyError``::

    SanicSQLAlchemyError
    ├── ConfigurationError          bad or missing settings, raised at init
    │   └── TasksTableMissingError  the durable tasks' table was never created
    ├── EngineNotInitialisedError   a unit was opened before any URL was configured
    ├── NoActiveUnitError           db.read / db.write / db.on_commit outside a unit
    ├── ReadOnlyError               a write attempted through db.read
    ├── UnitStateError              a session used after its unit committed, rolled back or closed
    ├── ConcurrentWriteError        db.write used from several tasks at once
    ├── EventLoopMismatchError      engines used from an event loop they were not made for
    ├── ReplicaUnavailableError     no replica can serve reads and the primary may not
    ├── PrimaryUnavailableError     the primary was lost or demoted (a failover, a restart)
    ├── TokenTypeError              db.unit(after=...) given something that is not a token
    ├── TaskArgumentError           a task deferred with an argument JSON cannot carry
    ├── TaskNotFoundError           db.tasks.requeue(id) of no dead task
    ├── UnknownTaskError            a stored task names no function this process registered
    ├── ClaimLostError              a task's run lost its claim to another run (rolled back)
    ├── UnknownEventError           db.listen / @db.listens_for named no event that exists
    └── ListenerTypeError           db.listen given a listener that is not callable

Misuse errors (everything but ``ConfigurationError``, ``ReadOnlyError``,
``TokenTypeError``, ``TaskArgumentError``, ``PrimaryUnavailableError``, the two lookup
errors and the two listener errors) are also ``RuntimeError``\\ s, so code that already
catches those keeps working; ``TokenTypeError``, ``TaskArgumentError`` and
``ListenerTypeError`` are ``TypeError``\\ s, what Python raises for an argument of the wrong
type; ``UnknownEventError`` is a ``ValueError``; ``TaskNotFoundError`` and
``UnknownTaskError`` are ``LookupError``\\ s.  Errors raised by the database itself (an
``IntegrityError`` at commit, say) are SQLAlchemy's and reach the caller unchanged, except
a write refused by a read-only connection, which becomes a ``ReadOnlyError`` chained to
the driver's error, and (PostgreSQL) a lost or demoted primary, which becomes a
``PrimaryUnavailableError``: still the SQLAlchemy ``OperationalError`` it replaces, with
the driver's error as ``orig`` and as its cause.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError, StatementError


class SanicSQLAlchemyError(Exception):
    """Base class of every error raised by sanic-sqlalchemy."""


class ConfigurationError(SanicSQLAlchemyError, ValueError):
    """A setting is missing or invalid; raised by ``init_app`` or at server start."""


class TasksTableMissingError(ConfigurationError):
    """The durable tasks' table does not exist: create it with
    ``await db.tasks.create_table()`` or through Alembic (``db.tasks.metadata``)."""


class EngineNotInitialisedError(SanicSQLAlchemyError, RuntimeError):
    """A unit of work was opened before any database URL was configured."""


class NoActiveUnitError(SanicSQLAlchemyError, RuntimeError):
    """``db.read``, ``db.write`` or ``db.on_commit`` was used outside a unit of work."""


class ReadOnlyError(SanicSQLAlchemyError):
    """A write was attempted through ``db.read`` and refused before it changed anything."""


class UnitStateError(SanicSQLAlchemyError, RuntimeError):
    """A session was used in a state of its unit that does not allow it."""


class ConcurrentWriteError(SanicSQLAlchemyError, RuntimeError):
    """``db.write`` was used from a second task while another task was using it."""


class EventLoopMismatchError(SanicSQLAlchemyError, RuntimeError):
    """The engines belong to another event loop than the one running now."""


class ReplicaUnavailableError(SanicSQLAlchemyError, RuntimeError):
    """No replica can serve a unit's reads and ``DATABASE_REPLICA_FALLBACK=error``
    forbids the primary (in Sanic: 503 with ``Retry-After``)."""


class PrimaryUnavailableError(SanicSQLAlchemyError, OperationalError):
    """The server that took writes was lost (stopped, restarted, unreachable) or no longer
    accepts them (demoted by a failover), and no server that does answered: the
    connection was discarded with every pooled one, and the next unit connects afresh
    (in Sanic: 503 with ``Retry-After``).  An ``OperationalError`` whose ``orig`` is the
    driver's error, so code that handles SQLAlchemy's lost connections keeps working.
    Whether a commit interrupted this way took effect is unknown."""

    def __init__(
        self,
        reason: str,
        orig: BaseException,
        statement: str | None = None,
        params: object = None,
        *,
        hide_parameters: bool = False,
    ) -> None:
        StatementError.__init__(
            self,
            f"The database primary is unavailable: {reason} ({type(orig).__name__}: {orig}). "
            "The connection was discarded; retry shortly: writes resume as soon as a "
            "server accepts them again.",
            statement,
            params,  # type: ignore[arg-type]
            orig,
            hide_parameters,
        )
        self.connection_invalidated = True
        #: Why the primary counts as unavailable, in words.
        self.reason = reason


class TokenTypeError(SanicSQLAlchemyError, TypeError):
    """``db.unit(after=...)`` was given something other than position tokens (``str`` or
    ``bytes``, a list of them, or None).  A client's malformed token is never an error:
    it is ignored."""


class TaskArgumentError(SanicSQLAlchemyError, TypeError):
    """``task.defer(...)`` was given an argument that does not survive a JSON round trip
    (a task's call is stored as JSON with the unit's commit); the message names it."""


class TaskNotFoundError(SanicSQLAlchemyError, LookupError):
    """``db.tasks.requeue(id)`` named no dead task (unknown, done, or not dead)."""


class UnknownTaskError(SanicSQLAlchemyError, LookupError):
    """A stored task names a function that no ``@db.task`` registered in the process
    running it (the module that defines it was not imported there)."""


class ClaimLostError(SanicSQLAlchemyError, RuntimeError):
    """A task's run found at its commit that its claim had expired and another run had
    taken the task over: the run's writes roll back, and the other run's count."""


class UnknownEventError(SanicSQLAlchemyError, ValueError):
    """``db.listen(name, ...)`` or ``@db.listens_for(name)`` named an event that does not
    exist; the message lists those that do."""


class ListenerTypeError(SanicSQLAlchemyError, TypeError):
    """``db.listen(name, listener)`` was given a listener that cannot be called."""
