"""A queue's worker running a task it was delivered: claimed by id, done in its unit.

The worker (taskiq's or Celery's) calls ``consume`` with the message's id, which is the
task's.  The run claims the task's row as a dispatcher's run does, so a message
delivered twice (a redelivery, a retry racing a slow run, a relay that published again)
runs the function at most once at a time and its database effects commit once: with
the deletion of the row, checked against the claim.  A failed run hands the task back
to the queue (``sent``) and raises, so that the queue's own retries apply; out of
attempts, it is marked dead first.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ...errors import ClaimLostError
from ...hooks import TaskOutcome
from ..context import TaskInfo, enter_task
from ..payload import decode
from ..runner import run_in_unit
from ..sql import HEARTBEAT, Claimed
from .sql import returned_statement, state_of, take

if TYPE_CHECKING:
    from ..decorator import Task
    from ..host import TaskHost

logger = logging.getLogger("sanic_sqlalchemy")

#: How a delivery ended: the function ran and its writes committed with the task's end;
#: nothing ran (done already, dead, or another run holds it); the run lost its claim.
DONE, SKIPPED, LOST = "done", "skipped", "lost"


async def consume(host: TaskHost, task: Task[Any, Any], task_id: str) -> str:
    """Run the delivered task ``task_id`` (``DONE``, ``SKIPPED`` or ``LOST``); a failure
    of the function is recorded on the task and raised again, for the queue to retry."""
    async with host.transaction() as connection:
        claimed = await take(connection, host.table, task_id)
        state = None if claimed is not None else await state_of(connection, host.table, task_id)
    if claimed is None:
        logger.info(
            "task %s (%s) delivered again: %s; nothing ran",
            task_id,
            task.name,
            "it is done" if state is None else f"it is {state} (another run holds it)",
        )
        return SKIPPED
    info = TaskInfo(claimed.id, claimed.name, claimed.attempts, claimed.max_attempts)
    enter_task(info)
    if claimed.attempts > claimed.max_attempts:
        # Taken over from a run that died (or hung) on its last allowed attempt.
        note = f"the run of attempt {claimed.max_attempts} died or hung (its claim expired)"
        await _hand_back(host, claimed, dead=True, error=note)
        return SKIPPED
    beating = asyncio.ensure_future(_keep_claim(host, claimed))
    started = perf_counter()
    try:
        args, kwargs = decode(claimed.payload)
        if not await run_in_unit(host, task, claimed, args, kwargs, await host.position_token()):
            # It wrote nothing: its row is deleted on its own (naming the claim).
            await host.finish([claimed])
    except ClaimLostError:
        # Another delivery took the task over after this run's claim expired.
        logger.warning("task %s (%s): claim lost, writes rolled back", claimed.id, task.name)
        return LOST
    except Exception as failure:
        error = traceback.format_exception(type(failure), failure, failure.__traceback__)
        dead = claimed.attempts >= claimed.max_attempts
        await _hand_back(host, claimed, dead=dead, error="".join(error))
        if dead:
            logger.error(
                "task %s (%s) failed on attempt %d of %d; it is dead "
                "(db.tasks.requeue(id) publishes it again)",
                claimed.id,
                claimed.name,
                claimed.attempts,
                claimed.max_attempts,
            )
        await _tell_listeners(host, info, "dead" if dead else "retry", failure, started)
        raise
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
    await _tell_listeners(host, info, "done", None, started)
    return DONE


async def _tell_listeners(
    host: TaskHost,
    info: TaskInfo,
    outcome: TaskOutcome,
    error: BaseException | None,
    started: float,
) -> None:
    """The database's ``task_end`` listeners, as a dispatcher's run tells them."""
    listeners = host.db.environment.listeners
    if listeners is not None:
        await listeners.task_ended(info, outcome, error, perf_counter() - started)


async def _hand_back(host: TaskHost, claimed: Claimed, *, dead: bool, error: str) -> None:
    async with host.transaction() as connection:
        await connection.execute(returned_statement(host.table, claimed, dead=dead, error=error))


async def _keep_claim(host: TaskHost, claimed: Claimed) -> None:
    """Renew the run's claim until cancelled, so that only a dead run is taken over."""
    while True:
        await asyncio.sleep(HEARTBEAT)
        try:
            await host.renew([claimed])
        except Exception:
            logger.warning("renewing the claim of task %s failed", claimed.id, exc_info=True)
