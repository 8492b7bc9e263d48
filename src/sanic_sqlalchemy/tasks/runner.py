"""One run of a claimed task: in a unit of its own, done in the same transaction.

The run's unit reads only from servers that reached the deferring unit's commit (the
commit's own position on the fast path, else the primary's position when the run
began, which is later).  When the function returns, the run deletes its task's row,
naming its claim, and commits that with the function's writes: the database effects
of a task happen once, and a run whose claim was taken over deletes nothing, raises
``ClaimLostError`` and rolls back.  A run that raises, times out or names no
registered function is put back to wait (capped exponential backoff, full jitter) or,
out of attempts, marked dead with the error and its traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import traceback
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from ..errors import ClaimLostError, UnknownTaskError
from .context import TaskInfo, enter_task
from .payload import decode
from .sql import Claimed, done_statement, failed_statement

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

    from ..unit import UnitOfWork
    from .decorator import Task
    from .finish import Finisher
    from .host import TaskHost

logger = logging.getLogger("sanic_sqlalchemy")

#: What a run ended with.
DONE: Final = "done"
RETRY: Final = "retry"
DEAD: Final = "dead"
LOST: Final = "lost"
Outcome = Literal["done", "retry", "dead", "lost"]


async def run_claimed(
    registry: TaskHost,
    claimed: Claimed,
    after: tuple[object, ...] = (),
    finisher: Finisher | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> str:
    """Run ``claimed`` to its end (``DONE``, ``RETRY``, ``DEAD`` or ``LOST``); a
    cancellation (a stop) propagates, leaving the task to be handed back.  A run that
    wrote nothing hands its row to ``finisher``, which deletes it with other runs' rows
    once the run ended, or deletes it alone.  ``loop``: the running loop, when the
    caller knows it (asking for it costs a system call on Python 3.11).  The database's
    ``task_end`` listeners hear of every run whose outcome is stored (not of a lost
    claim: the run that took the task over reports it)."""
    info = TaskInfo(claimed.id, claimed.name, claimed.attempts, claimed.max_attempts)
    enter_task(info)
    listeners = registry.db.environment.listeners
    if listeners is None:
        outcome, _error = await _run(registry, claimed, after, finisher, loop)
        return outcome
    started = perf_counter()
    outcome, error = await _run(registry, claimed, after, finisher, loop)
    if outcome == LOST:
        return outcome
    await listeners.task_ended(info, outcome, error, perf_counter() - started)
    return outcome


async def _run(
    registry: TaskHost,
    claimed: Claimed,
    after: tuple[object, ...],
    finisher: Finisher | None,
    loop: asyncio.AbstractEventLoop | None,
) -> tuple[Outcome, BaseException | None]:
    task = registry.registered.get(claimed.name)
    if claimed.attempts > claimed.max_attempts:
        # Taken over from a run that died (or hung) on the last allowed attempt.
        note = (
            f"the process running attempt {claimed.max_attempts} of {claimed.max_attempts} "
            "died or hung (its claim expired)"
        )
        error = f"{claimed.error}\n{note}" if claimed.error else note
        return await _record_failure(registry, claimed, task, error, dead=True), None
    try:
        if task is None:
            raise UnknownTaskError(
                f"no function is registered as task {claimed.name!r} in this process: "
                "import the module that defines it (with its @db.task) before running "
                "the dispatcher, or keep the task's name when renaming its function "
                "(@db.task(name=...))."
            )
        arguments = claimed.arguments
        args, kwargs = decode(claimed.payload) if arguments is None else arguments
        # Replicas are made from read_urls (asked of the settings, not of the engines,
        # which would check the running loop: a system call per run).
        if not after and registry.db.settings.read_urls:
            after = await registry.position_token()
        wrote = await run_in_unit(registry, task, claimed, args, kwargs, after, loop)
        if not wrote:
            if finisher is None:
                await registry.finish([claimed])
            else:
                finisher.finish(claimed)
    except ClaimLostError:
        logger.warning(
            "task %s (%s): its claim expired and another run took it over; this run's "
            "writes were rolled back",
            claimed.id,
            claimed.name,
        )
        return LOST, None
    except Exception as failure:
        text = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__))
        dead = claimed.attempts >= claimed.max_attempts
        logger.log(
            logging.ERROR if dead else logging.WARNING,
            "task %s (%s) failed on attempt %d of %d%s",
            claimed.id,
            claimed.name,
            claimed.attempts,
            claimed.max_attempts,
            "; it is dead (db.tasks.requeue(id) runs it again)" if dead else "; it will retry",
            exc_info=failure,
        )
        return await _record_failure(registry, claimed, task, text, dead=dead), failure
    return DONE, None


async def run_in_unit(
    registry: TaskHost,
    task: Task[Any, Any],
    claimed: Claimed,
    args: list[Any],
    kwargs: dict[str, Any],
    after: tuple[object, ...],
    loop: asyncio.AbstractEventLoop | None = None,
) -> bool:
    """Call the task in a unit of its own; when it wrote through ``db.write``, delete its
    row in that transaction and commit both.  Whether it wrote (a run that did not is
    finished by the caller, with other runs).

    The unit is opened when the task first asks for it (many tasks only send a message
    and never touch the database), except with listeners (their async ``unit_begin``
    is awaited) and in the test kit's rolled-back tests (units take turns there)."""
    db = registry.db
    runner = asyncio.current_task(loop)  # no system call when the loop is given

    def open_unit() -> UnitOfWork:
        unit = db.open_unit(after)
        # As in @db.retry: the run commits when the function returns (an explicit
        # commit, which would commit before the task is marked done, is refused), and
        # a retried function called inside joins the run's unit.
        unit.retrying = True
        unit.commits_on_exit = True
        unit.owner = runner  # also when a child task of the run asks for it first
        return unit

    marker, token = db.scope.enter_on_first_use(open_unit)
    try:
        try:
            if db.environment.listeners is not None or db.joined is not None:
                eager = marker.unit()
                if eager is not None and eager.beginning is not None:
                    await eager.begin_heard()  # async unit_begin listeners
            # A coroutine function's call is awaited here, without a frame of its own.
            call = task.func(*args, **kwargs) if task.is_async else _in_thread(task, args, kwargs)
            timeout = task.options.timeout
            if timeout is None:
                await call
            else:
                await asyncio.wait_for(call, timeout)
        except BaseException as error:
            if marker.opened is not None:
                await marker.opened.end(False, error)
            raise
        unit = marker.opened
        if unit is None:
            return False
        try:
            if unit.write_session is None:
                await unit.end(True)
                return False
            done = await unit.write.execute(*done_statement(registry.table, claimed))
            if cast("CursorResult[Any]", done).rowcount != 1:
                raise ClaimLostError(
                    f"task {claimed.id} ({claimed.name}): the run's claim expired and "
                    "another run took the task over, so this run's writes roll back. A "
                    "run must renew its claim every few seconds: keep the event loop "
                    "free (run blocking work in a thread) or split the task."
                )
        except BaseException as error:
            await unit.end(False, error)
            raise
        await unit.end(True)
        return True
    finally:
        marker.close()
        db.scope.leave(token)


async def _in_thread(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    """Call a plain function in a thread (it may block); current_task() works there."""
    result = await asyncio.to_thread(task.func, *args, **kwargs)
    if inspect.isawaitable(result):
        await result


async def _record_failure(
    registry: TaskHost,
    claimed: Claimed,
    task: Task[Any, Any] | None,
    error: str,
    *,
    dead: bool,
) -> Literal["retry", "dead"]:
    delay = 0.0
    if not dead:
        options = registry.default_options if task is None else task.options
        ceiling = min(options.max_backoff, options.backoff * 2 ** (claimed.attempts - 1))
        delay = random.uniform(0, ceiling)
    statement = failed_statement(registry.table, claimed, dead=dead, delay=delay, error=error)
    # Should this fail (the database is down), the error propagates to the run's
    # tracker, which logs it; the task runs again once its claim expires.
    async with registry.transaction() as connection:
        await connection.execute(statement)
    return DEAD if dead else RETRY
