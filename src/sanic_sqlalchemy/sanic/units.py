"""A request's units of work: ending them all, now or in the background."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..database import DatabaseCore
from ..unit import UnitOfWork

logger = logging.getLogger("sanic_sqlalchemy")

#: The units of one request, one per database, created on first use.
Units = dict[DatabaseCore, UnitOfWork]
#: Where a connection's ``ctx`` keeps the units of its current request.
UNITS_ON_CONNECTION = "_sanic_sqlalchemy_units"


async def end_units(units: Units, success: bool) -> None:
    """End every unit (those already settled keep their outcome); raise the first error.

    Once one unit fails (its commit raised), the units after it roll back.
    """
    error: BaseException | None = None
    for unit in list(units.values()):
        try:
            await unit.end(success and error is None)
        except BaseException as failure:
            if error is None:
                error = failure
            else:
                logger.error("ending another unit of the request failed too", exc_info=failure)
    if error is not None:
        raise error


def end_later(units: Units) -> None:
    task = asyncio.get_running_loop().create_task(end_units(dict(units), success=False))
    task.add_done_callback(_log_failure)
    units.clear()


def _log_failure(task: Any) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "ending a unit of work left by a previous request failed", exc_info=task.exception()
        )
