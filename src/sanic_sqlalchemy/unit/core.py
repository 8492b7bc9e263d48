"""What a unit's two sessions share: its phase, turns, writing connection, statistics,
callbacks and read route.

``db.read`` and ``db.write`` each see their unit only through this class; the unit's
lifecycle (making the sessions, settling, ending) is ``lifecycle.UnitOfWork``, built on
top of it.  A unit is handed what it needs (``UnitNeeds``), never the ``Database``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import UnitStateError
from ..hooks import CallbackCapture, CallbackErrorHook, TaskOutbox
from ..insight import UnitStats, attach
from ..replicas.probe import commit_position
from ..replicas.routing import ReadRoute, wanted_position
from .callbacks import Callback, CallbackQueue, report_to_hook, run_callbacks
from .gate import Gate, WritingTurn
from .scope import UnitScope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from ..engine.backends import Backend
    from ..engine.engines import Engines

logger = logging.getLogger("sanic_sqlalchemy")
_T = TypeVar("_T")


class UnitState(Enum):
    """Where a unit of work is in its life."""

    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    ENDED = "ended"


STATE_MESSAGES = {
    UnitState.COMMITTED: (
        "db.write cannot be used: this unit has already committed (in Sanic, the "
        "response has started: a streaming response commits before its headers are "
        "sent). Write before responding, or open a new unit with `async with db:`."
    ),
    UnitState.ROLLED_BACK: (
        "db.write cannot be used: this unit has already rolled back (in Sanic, an "
        "error response has started). Open a new unit with `async with db:`."
    ),
    UnitState.ENDED: (
        "This unit of work has ended and its sessions are closed (in Sanic: the request "
        "has been answered; a task it started needs a unit of its own). Use db.read and "
        "db.write inside `async with db:` (or a request), not after it."
    ),
}


class UnitNeeds(Protocol):
    """What a unit needs from the database it belongs to (``environment.Environment``)."""

    @property
    def scope(self) -> UnitScope[Any]:
        """The one ContextVar of the database: callbacks run outside the unit."""

    @property
    def on_callback_error(self) -> CallbackErrorHook | None:
        """Told about every on-commit callback that raises."""

    @property
    def capture(self) -> CallbackCapture | None:
        """Sees every callback (the test kit's ``capture_on_commit``)."""

    @property
    def commit_on_exit(self) -> bool:
        """Whether a unit that succeeds commits by itself."""

    @property
    def outer_sync(self) -> Connection | None:
        """A test's outer connection, which every unit joins; ``None`` in production."""

    @property
    def engines(self) -> Callable[[], Engines]:
        """Gives the engines of the running event loop."""


class UnitCore:
    """The state of one unit of work that both of its sessions read and change."""

    # Slots: one unit per request, and fewer objects for the cyclic GC to look at.
    __slots__ = (
        "_after",
        "_engines",
        "_needs",
        "_route",
        "callbacks",
        "commit_failed",
        "commit_token",
        "commits_on_exit",
        "outbox",
        "owner",
        "read_bound_to",
        "read_gate",
        "read_sync",
        "reading_on_writer",
        "retrying",
        "state",
        "stats",
        "write_gate",
        "write_sync",
        "write_turn",
        "writer_connection",
        "wrote",
    )

    #: The durable tasks deferred in this unit: set by the first ``defer`` only.
    outbox: TaskOutbox

    def __init__(self, needs: UnitNeeds, after: tuple[object, ...] = ()) -> None:
        self._needs = needs
        #: Clients' position tokens: reads only from replicas that have reached them.
        self._after = after
        self._route: ReadRoute | None = None
        #: The position of this unit's last commit, for ``db.unit(after=...)`` (only
        #: with replicas; None until a write commits).
        self.commit_token: str | None = None
        self._engines: Engines | None = None
        #: Whether a successful end commits (``commit_on_exit``).
        self.commits_on_exit = needs.commit_on_exit
        self.state = UnitState.ACTIVE
        self.owner = asyncio.current_task()
        #: The on-commit queue, made by the first ``db.on_commit`` (most units have none).
        self.callbacks: CallbackQueue | None = None
        # ``outbox`` is left unset: a unit of a database without tasks never pays for it.
        self.read_gate = Gate()
        self.write_gate = Gate()
        #: ``with unit.write_turn:`` holds db.write's connection to write.
        self.write_turn = WritingTurn(self.write_gate)
        #: The synchronous halves of db.read and db.write, once created.
        self.read_sync: Session | None = None
        self.write_sync: Session | None = None
        #: The connection of the open write transaction, which reads then share (a
        #: test's outer connection, always).
        self.writer_connection: Connection | None = needs.outer_sync
        #: The connection the read session's current transaction is bound to.
        self.read_bound_to: Connection | None = None
        self.reading_on_writer = False
        #: Whether a write transaction ever began: reads then refresh loaded objects.
        self.wrote = False
        #: Whether the unit tried to commit and could not (its writes rolled back).
        self.commit_failed = False
        #: What the unit asked of the database, and how long it took.
        self.stats = UnitStats()
        #: Whether ``@db.retry`` runs this unit: a retried function called inside joins
        #: it, and ``db.write`` refuses an explicit commit (the retry would repeat it).
        self.retrying = False

    # -- phase ------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Whether the write side is finished (committed or rolled back)."""
        return self.state is not UnitState.ACTIVE

    @property
    def ended(self) -> bool:
        """Whether both sessions are closed."""
        return self.state is UnitState.ENDED

    def check_readable(self) -> None:
        if self.state is UnitState.ENDED:
            raise UnitStateError(STATE_MESSAGES[UnitState.ENDED])

    def check_writable(self) -> None:
        if self.state is not UnitState.ACTIVE:
            raise UnitStateError(STATE_MESSAGES[self.state])

    # -- engines ----------------------------------------------------------------

    @property
    def engines(self) -> Engines:
        engines = self._engines
        if engines is None:
            engines = self._engines = self._needs.engines()
        return engines

    @property
    def backend(self) -> Backend:
        return self.engines.backend

    # -- writes -----------------------------------------------------------------

    @property
    def holds_writes(self) -> bool:
        """Whether ``db.write`` holds changes not yet flushed."""
        write = self.write_sync
        return write is not None and has_pending(write)

    def write_began(self, connection: Connection) -> None:
        self.writer_connection = connection
        self.wrote = True
        attach(connection, self.stats)

    @property
    def transaction_connection(self) -> Connection | None:
        """The connection of the write transaction under way, once it began on one;
        ``None`` before, and in a test's transaction (where the unit's transaction is a
        savepoint on the test's connection, whichever has begun)."""
        return None if self._needs.outer_sync is not None else self.writer_connection

    def write_ended(self) -> None:
        self.writer_connection = self._needs.outer_sync

    # -- replicas ---------------------------------------------------------------

    def read_route(self) -> ReadRoute | None:
        """Where reads outside the writer go, when the database has replicas."""
        route = self._route
        if route is None:
            engines = self.engines
            replicas = engines.replicas
            if replicas is None:
                return None
            wanted = wanted_position(self._after, replicas.tokens)
            route = self._route = ReadRoute(
                replicas, engines.read, engines.settings.replicas, wanted
            )
        return route

    @property
    def tokens(self) -> tuple[object, ...]:
        """The clients' position tokens this unit reads after (``@db.retry`` hands them
        to each attempt's unit, which replaces this one)."""
        return self._after

    def want(self, tokens: tuple[object, ...]) -> None:
        """Read only from replicas that reached ``tokens`` too (before the first read)."""
        if not tokens:
            return
        route = self._route
        if route is not None and route.read_from is not None:
            logger.debug("position tokens given after the unit's first read are ignored")
            return
        self._after += tokens
        self._route = None  # made again, with every token, at the first read

    @property
    def read_from(self) -> str:
        """``"primary"`` or the URL (without password) of the replica serving reads."""
        route = self._route
        if route is None or self.wrote:
            return "primary"
        return route.read_from or "primary"

    def capture_commit_position(self, connection: Connection | None) -> None:
        """Right after a commit on ``connection``: remember its position as a token."""
        engines = self._engines
        replicas = None if engines is None else engines.replicas
        if replicas is None or connection is None:
            return
        try:
            position = commit_position(connection, replicas.backend)
        except Exception:
            logger.warning(
                "could not read the commit's position; the client's next reads may go "
                "to the primary only by the lag limit",
                exc_info=True,
            )
            return
        if position is not None and position.encode():
            self.commit_token = replicas.tokens.issue(position)

    # -- callbacks --------------------------------------------------------------

    def on_commit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Queue ``func(*args, **kwargs)`` for after the commit of the current work."""
        if self.state is not UnitState.ACTIVE:
            raise UnitStateError(
                f"db.on_commit cannot be used: this unit has already {self.state.value}, "
                "so no later commit will run the callback. Call it directly instead."
            )
        write = self.write_sync
        savepoint = None if write is None else write.get_nested_transaction()
        callback = Callback(func, args, kwargs, savepoint)
        callbacks = self.callbacks
        if callbacks is None:
            callbacks = self.callbacks = CallbackQueue()
        callbacks.add(callback)
        capture = self._needs.capture
        if capture is not None:
            capture.registered(callback)

    async def run_ready_callbacks(self) -> None:
        """Run the callbacks made ready by a commit that just succeeded."""
        callbacks = self.callbacks
        if callbacks is not None:
            ready = callbacks.take_ready()
            if ready:
                await self.run_outside(ready)

    async def run_outside(self, callbacks: list[Callback]) -> None:
        """Run ``callbacks`` outside any unit (inside a task ``shielded`` started)."""
        # That task's context is a copy: leaving the unit here leaves it for that task
        # only, so that callbacks run outside any unit while the commit before them ran
        # inside it (ORM event listeners of its flush may register callbacks).
        needs = self._needs
        needs.scope.step_outside()
        capture = needs.capture
        if capture is not None and not capture.ready(callbacks):
            return
        await run_callbacks(callbacks, self.callback_failed)

    async def callback_failed(self, error: BaseException, callback: Callable[..., Any]) -> None:
        """An on-commit ``callback`` (the callable registered) raised ``error``, which is
        logged already: hand it to the ``on_callback_error`` hook, if one is set."""
        hook = self._needs.on_callback_error
        if hook is not None:
            await report_to_hook(hook, error, callback)

    async def shielded(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` to completion even if the calling task is cancelled meanwhile.

        The work runs in its own task, in a copy of the caller's context: still inside
        the unit (ORM event listeners of a flush at commit may call ``db.on_commit``),
        until it runs callbacks, which run outside any unit (and may open their own).
        A cancellation of the caller is re-raised once the work is done.
        """
        # The unit is set explicitly, not left to an integration's provider (which may
        # only answer the task that owns the request's unit).
        context = contextvars.copy_context()
        context.run(self._needs.scope.enter, self)
        task = context.run(asyncio.get_running_loop().create_task, work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "the end of a cancelled unit of work failed",
                    exc_info=task.exception(),
                )
            raise


def has_pending(session: Session) -> bool:
    """Whether ``session`` holds changes a flush would send (cheap: no history check)."""
    return bool(session._new or session._deleted or session.identity_map._modified)
