"""Extension points, as Protocols: what the library calls back into.

Nothing here imports the rest of the package, so every layer may name these types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


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

    def before_commit(self, session: Any, /) -> None:
        """The unit's transaction (not a savepoint) is about to commit on ``session``
        (the write session's synchronous half): store the tasks, in one statement."""

    def committed(self, commit_token: str | None, /) -> None:
        """That commit succeeded (``commit_token``: its position, with replicas)."""

    def savepoint_released(self, savepoint: object, parent: object | None, /) -> None:
        """A savepoint's tasks now belong to the enclosing one (``None``: the unit)."""

    def savepoint_rolled_back(self, savepoint: object, /) -> None:
        """Drop the tasks deferred inside a savepoint that rolled back."""

    def rolled_back(self) -> None:
        """The transaction ended without committing: drop every task not stored."""
