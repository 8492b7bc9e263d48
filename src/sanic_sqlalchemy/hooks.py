"""Extension points, as Protocols: what the library calls back into.

Nothing here imports the rest of the package, so every layer may name these types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

#: How a unit's write side ended (``unit_end``): its last write transaction committed or
#: rolled back, or it opened none.
UnitOutcome = Literal["committed", "rolled_back", "no_write"]
#: How a run of a durable task ended (``task_end``): done, to be tried again, or out of
#: attempts.
TaskOutcome = Literal["done", "retry", "dead"]


class CallbackErrorHook(Protocol):
    """Called as ``hook(error, callback)`` when an on-commit callback raises.

    ``callback`` is the callable that was registered.  The hook may be async; it is
    awaited before the unit ends.  This is where Sentry and the like plug in.
    """

    def __call__(self, error: BaseException, callback: Callable[..., Any], /) -> Any: ...


class RegisteredCallback(Protocol):
    """What a ``CallbackCapture`` sees of one ``db.on_commit`` call."""

    @property
    def func(self) -> Callable[..., Any]: ...

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...


class CallbackCapture(Protocol):
    """Sees every on-commit callback of a ``Database`` while set on its environment
    (the test kit's ``capture_on_commit``)."""

    def registered(self, callback: RegisteredCallback, /) -> None:
        """``db.on_commit`` queued ``callback``."""

    def ready(self, callbacks: Sequence[RegisteredCallback], /) -> bool:
        """``callbacks`` are committed and about to run; return whether to run them."""


class ServerIsolation(Protocol):
    """Told when a server starts and stops in the process while a test isolates a
    ``Database`` (the test kit's rolled-back tests), in place of creating and disposing
    the engines: a server in the test's own loop joins the test's transaction; one in a
    loop of its own (sanic-testing's synchronous client) needs a transaction there."""

    async def server_starting(self) -> None:
        """A server of this process is starting in the running loop."""

    async def server_stopped(self) -> None:
        """A server of this process has stopped in the running loop."""


class TaskOutbox(Protocol):
    """The tasks one unit deferred (``tasks.outbox.Outbox``), told by ``db.write`` how
    its transaction goes: they are stored with its commit and follow its savepoints
    as on-commit callbacks do."""

    def before_commit(self, session: Any, connection: Any, /) -> None:
        """The unit's transaction (not a savepoint) is about to commit on ``session``
        (the write session's synchronous half): store the tasks, in one statement.
        ``connection`` is the transaction's, when the unit knows it (else ``None``:
        ask the session)."""

    def commit_error(self, error: BaseException, /) -> BaseException | None:
        """What to raise instead of ``error``, which failed the commit (``None``: raise
        it as it is)."""

    def committed(self, commit_token: str | None, /) -> None:
        """That commit succeeded (``commit_token``: its position, with replicas)."""

    def savepoint_released(self, savepoint: object, parent: object | None, /) -> None:
        """A savepoint's tasks now belong to the enclosing one (``None``: the unit)."""

    def savepoint_rolled_back(self, savepoint: object, /) -> None:
        """Drop the tasks deferred inside a savepoint that rolled back."""

    def rolled_back(self) -> None:
        """The transaction ended without committing: drop every task not stored."""


class Listeners(Protocol):
    """What units and task runs tell the listeners registered on their database
    (``listeners.ListenerSet``).  A database has none until ``db.listen`` registers the
    first: until then nothing is told and nothing is paid.

    Every method calls the listeners of one event in registration order; a listener
    that raises is logged and changes nothing.
    """

    def unit_began(self, unit: Any, /) -> Awaitable[None] | None:
        """``unit`` was opened: call the ``unit_begin`` listeners; return what the async
        ones still have to do (for the opener to await when it can), or ``None``."""

    async def unit_ended(
        self, unit: Any, outcome: UnitOutcome, error: BaseException | None, duration: float, /
    ) -> None:
        """``unit`` ended: its write side ``outcome`` (``"committed"``, ``"rolled_back"``
        or ``"no_write"``), the exception that ended it, ``duration`` in seconds."""

    async def callback_failed(
        self, unit: Any, callback: Callable[..., Any], error: BaseException, /
    ) -> None:
        """An on-commit ``callback`` of ``unit`` (the callable registered) raised ``error``."""

    async def task_ended(
        self, task: Any, outcome: TaskOutcome, error: BaseException | None, duration: float, /
    ) -> None:
        """A run of the durable ``task`` (``current_task()``'s object) ended with
        ``outcome`` (``"done"``, ``"retry"`` or ``"dead"``)."""
