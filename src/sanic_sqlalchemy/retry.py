"""``@db.retry``: run a function in a unit of work of its own, and run it again when the
database reports a conflict that a new attempt can get past.

Conflicts are serialization failures and deadlocks: PostgreSQL's SQLSTATE 40001 and
40P01, MySQL/MariaDB's error 1213.  Each attempt is a fresh unit, so a failed attempt's
writes are rolled back and its on-commit callbacks dropped before the next begins; the
waits between attempts grow exponentially, capped, with full jitter so that the
transactions that collided do not collide again in step.

An attempt's unit replaces the unit the call was made in (a request's, a
``db.unit(after=...)`` block's): it reads after the same clients' position tokens.  It
commits when the function returns, whatever ``commit_on_exit`` says, and ``db.write``
refuses an explicit commit inside it: a commit before a conflict would stand, and the
next attempt would make it again.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

from .errors import ConfigurationError, UnitStateError
from .unit import UnitOfWork, UnitScope
from .unit.outcome import error_commits, result_commits

logger = logging.getLogger("sanic_sqlalchemy")

#: Attribute of the functions ``@db.retry`` returns.
RETRIED = "__sanic_sqlalchemy_retried__"

P = ParamSpec("P")
T = TypeVar("T")

#: PostgreSQL: serialization_failure, deadlock_detected.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
#: MySQL/MariaDB: ER_LOCK_DEADLOCK, and ER_CHECKREAD, MariaDB's write conflict under
#: snapshot isolation (``innodb_snapshot_isolation``, the default from 11.6 on).
CONFLICT_MYSQL_ERRORS = frozenset({1213, 1020})


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them (seconds)."""

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(
                f"@db.retry(attempts=...): expected a whole number, got {self.attempts!r}."
            )
        if self.attempts < 1:
            raise ConfigurationError(
                f"@db.retry(attempts=...): must be at least 1, got {self.attempts}."
            )
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"@db.retry({name}=...): expected a number of seconds, 0 or more, "
                    f"got {value!r}."
                )

    def delay(self, failed_attempts: int) -> float:
        """A random wait before the next attempt: up to ``backoff * 2**(n-1)``, capped."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (failed_attempts - 1))
        return random.uniform(0, ceiling)


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) is a serialization failure or a
    deadlock, which a new attempt of the whole transaction may get past."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and _is_conflict_of_driver(current.orig):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_conflict_of_driver(error: BaseException | None) -> bool:
    # asyncpg's errors, as SQLAlchemy adapts them, carry the SQLSTATE; asyncmy's and
    # aiomysql's carry MySQL's error number first in their arguments.
    if getattr(error, "sqlstate", None) in CONFLICT_SQLSTATES:
        return True
    if getattr(error, "pgcode", None) in CONFLICT_SQLSTATES:
        return True
    arguments: tuple[Any, ...] = getattr(error, "args", ())
    return bool(arguments) and arguments[0] in CONFLICT_MYSQL_ERRORS


#: Opens a new unit of work that reads after the given clients' position tokens, not yet
#: current anywhere (``Database.open_unit``).
UnitOpener = Callable[[tuple[object, ...]], UnitOfWork]


def retrying(
    scope: UnitScope[UnitOfWork],
    open_unit: UnitOpener,
    func: Callable[P, Awaitable[T]],
    policy: RetryPolicy,
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``func`` run by ``run_with_retries`` (what ``@db.retry`` returns)."""
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"@db.retry needs an async function; {getattr(func, '__qualname__', func)!r} "
            "is not one (each attempt awaits it inside a unit of work)."
        )

    @functools.wraps(func)
    async def with_retries(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_with_retries(scope, open_unit, func, args, kwargs, policy)

    # Seen by the sanic-ext integration, which refuses injected sessions here.
    setattr(with_retries, RETRIED, True)
    return with_retries


async def run_with_retries(
    scope: UnitScope[UnitOfWork],
    open_unit: UnitOpener,
    func: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    policy: RetryPolicy,
) -> T:
    """Await ``func`` in a unit of its own until an attempt commits, up to
    ``policy.attempts`` times when the database reports a conflict."""
    outer = scope.current()
    if outer is not None and outer.retrying and outer.owner is asyncio.current_task():
        # Called by a function that is itself being retried: part of that attempt, which
        # the outermost retry runs again as a whole (a unit of its own would commit
        # here, and a retry of the outer attempt would then repeat its effects).
        return await func(*args, **kwargs)
    if outer is not None and not outer.settled and (outer.wrote or outer.holds_writes):
        raise UnitStateError(
            f"@db.retry on {getattr(func, '__qualname__', func)!r} was called inside a unit "
            "of work that has already written: a retry cannot undo that unit's writes, "
            "and its own unit would not see them. Call it before writing (in Sanic: "
            "decorate the handler itself), or outside the unit."
        )
    # The client's position (the request's tokens, or db.unit(after=...)'s) holds for
    # every attempt: each reads only from replicas that have the client's last write.
    tokens = () if outer is None else outer.tokens
    attempt = 0
    while True:
        attempt += 1
        unit = open_unit(tokens)
        unit.retrying = True
        # The retry owns the transaction: the attempt commits when the function returns
        # (an explicit commit is refused), with commit_on_exit=False too.
        unit.commits_on_exit = True
        token = scope.enter(unit)
        try:
            result = await _attempt(unit, func, args, kwargs)
        except Exception as error:
            if attempt >= policy.attempts or not is_conflict(error):
                raise
            delay = policy.delay(attempt)
            logger.info(
                "%s: attempt %d of %d hit a database conflict (%s); retrying in %.3f s",
                getattr(func, "__qualname__", func),
                attempt,
                policy.attempts,
                _describe(error),
                delay,
            )
        else:
            return result
        finally:
            scope.leave(token)
            if outer is not None and not outer.ended:
                # Every attempt's statements and time, the failed ones' included.
                outer.absorb(unit)
        await asyncio.sleep(delay)


async def _attempt(
    unit: UnitOfWork,
    func: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    if unit.beginning is not None:
        await unit.begin_heard()  # async unit_begin listeners
    try:
        result = await func(*args, **kwargs)
    except BaseException as error:
        await unit.end(error_commits(error), error)
        raise
    # A response of status 400 or more rolls back, as a request's own unit would.
    await unit.end(result_commits(result))
    return result


def _describe(error: BaseException) -> str:
    shown = getattr(error, "orig", None) or error
    first_line = (str(shown).splitlines() or [""])[0]
    return f"{type(shown).__name__}: {first_line}"
