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
