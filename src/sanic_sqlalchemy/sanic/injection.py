"""Injected sessions with sanic-ext: a handler parameter annotated with ``ReadSession``
or ``WriteSession`` (or a database's own subclasses of them) receives ``db.read`` or
``db.write`` of the request's unit.

sanic-ext matches an annotation by its exact class, so each class names one database:
the one whose ``read_session_class`` / ``write_session_class`` it is.  A class that no
database of the app gives, or that several give, is a ``ConfigurationError`` at server
start for a handler that asks for it, never a guess.  Nothing here imports sanic-ext:
Sanic loads it into the app (``app._ext``) before the start-up listeners run, and
without it the one listener below finds nothing to do.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..database import DatabaseCore
from ..errors import ConfigurationError, NoActiveUnitError
from ..retry import RETRIED
from ..unit import UnitOfWork
from ..unit.sessions import ReadSession, WriteSession

if TYPE_CHECKING:
    from sanic import Sanic


#: Before sanic-ext's own start-up listeners (``sanic_ext.config.PRIORITY``, -1000 and
#: -1001), which read the registry and the handlers' signatures.
_PRIORITY = -999
_HTTP_METHODS = frozenset({"get", "post", "put", "head", "options", "patch", "delete"})

_Givers = dict[type, list[DatabaseCore]]


def install_injection(app: Sanic[Any, Any]) -> None:
    """Register the app's session classes with sanic-ext at each server start."""
    app.register_listener(_register_sessions, "before_server_start", priority=_PRIORITY)


async def _register_sessions(app: Sanic[Any, Any]) -> None:
    # Sanic sets app._ext when it loads sanic-ext, at the latest when the server starts
    # (before any listener), unless it is not installed or AUTO_EXTEND is off.
    ext: Any = getattr(app, "_ext", None)
    registry = getattr(ext, "_injection_registry", None) if ext is not None else None
    if registry is None:
        _refuse_without_injection(app, ext)
        return
    databases: list[DatabaseCore] = getattr(app.request_class, "_sanic_sqlalchemy_databases", [])
    givers: _Givers = {ReadSession: [], WriteSession: []}
    for db in databases:
        givers.setdefault(db.read_session_class, []).append(db)
        givers.setdefault(db.write_session_class, []).append(db)
    for name, handler, websocket in _handlers(app):
        for param, cls in _session_parameters(handler):
            where = f"The handler {name!r} (parameter {param}: {cls.__name__})"
            if websocket:
                raise ConfigurationError(
                    f"{where} is a websocket handler, which gets no request unit of work "
                    "(it would hold a transaction for as long as the connection lives), "
                    "so no session can be injected. Open a unit where you need one:\n\n"
                    "    async with db:\n"
                    "        ...  # db.read, db.write\n"
                )
            if getattr(handler, RETRIED, False):
                raise ConfigurationError(
                    f"{where} is decorated with @db.retry, which runs each attempt in a "
                    "unit of work of its own, while sanic-ext injects the request's "
                    "session once, before the handler runs: the attempts would not use "
                    "it. Inside a retried handler use db.read and db.write, which follow "
                    "each attempt's unit, and drop the session parameter."
                )
            problem = _problem(cls, givers.get(cls, []), givers)
            if problem is not None:
                raise ConfigurationError(f"{where}: {problem}")
        for param, cls in _sqlalchemy_session_parameters(handler):
            if cls not in registry:
                raise ConfigurationError(_plain_session_refusal(name, param, cls))
    for cls, dbs in givers.items():
        ext.add_dependency(cls, _constructor(cls, dbs, givers))


def _refuse_without_injection(app: Sanic[Any, Any], ext: Any) -> None:
    """Refuse, at server start, a handler that asks for a session nothing would give.

    Without sanic-ext's injection Sanic calls the handler without the parameter: a
    ``TypeError`` (a 500) on every request, or ``None`` when it has a default.
    """
    for name, handler, _websocket in _handlers(app):
        for param, cls in _sqlalchemy_session_parameters(handler):
            raise ConfigurationError(
                _plain_session_refusal(name, param, cls)
                + f" Injecting a session needs sanic-ext, which {_why_no_injection(app, ext)}"
            )
        for param, cls in _session_parameters(handler):
            raise ConfigurationError(
                f"The handler {name!r} (parameter {param}: {cls.__name__}) asks for an "
                f"injected session, which needs sanic-ext, and sanic-ext "
                f"{_why_no_injection(app, ext)} Without it Sanic would call the handler "
                "without the session (a TypeError on every request, or the parameter's "
                "default). Either make sanic-ext load, or drop the parameter and use "
                "db.read / db.write, which need no injection."
            )


def _why_no_injection(app: Sanic[Any, Any], ext: Any) -> str:
    """Why sanic-ext's injection is not there, as the end of a sentence."""
    if ext is not None:
        return (
            "is loaded without its injection extension: keep sanic-ext's injection "
            "enabled (it is by default)."
        )
    if not app.config.get("AUTO_EXTEND", True):
        return (
            "is not loaded because the app's AUTO_EXTEND setting is False: set it to True, "
            "or call app.extend() before the server starts."
        )
    try:
        importlib.import_module("sanic_ext")
    except ModuleNotFoundError as error:
        if error.name == "sanic_ext":
            return "is not installed: pip install sanic-ext (or sanic[ext])."
        return (
            f"is installed but cannot be imported ({error}), so Sanic skips it: install "
            f"{error.name!r}."
        )
    except ImportError as error:
        return f"is installed but cannot be imported ({error}), so Sanic skips it."
    return "was not loaded into this app: call app.extend() before the server starts."


def _plain_session_refusal(name: str, param: str, cls: type) -> str:
    return (
        f"The handler {name!r} (parameter {param}: {cls.__name__}) asks for a SQLAlchemy "
        f"{cls.__name__}, which nothing gives (sanic-sqlalchemy injects its own session "
        "classes only, and no dependency is registered for it), so every request would "
        "fail. Annotate it with WriteSession (the request's db.write) or ReadSession "
        "(its db.read), from sanic_sqlalchemy."
    )


def _constructor(cls: type, dbs: list[DatabaseCore], givers: _Givers) -> Callable[[], Any]:
    """What sanic-ext calls for a parameter annotated with ``cls``, in the request's task
    (a dependency's own constructor may ask for it too)."""
    problem = _problem(cls, dbs, givers)
    if problem is not None:

        def refuse() -> Any:
            raise ConfigurationError(f"{cls.__name__} cannot be injected: {problem}")

        return refuse
    db = dbs[0]
    if issubclass(cls, ReadSession):

        def read_session() -> ReadSession:
            return _unit(db, cls).read

        return read_session

    def write_session() -> WriteSession:
        return _unit(db, cls).write

    return write_session


def _unit(db: DatabaseCore, cls: type) -> UnitOfWork:
    """The request's unit of ``db`` (created here if the request has none yet, which
    takes no connection: the session connects at its first statement)."""
    unit = db.scope.current()
    if unit is None:
        raise NoActiveUnitError(
            f"A {cls.__name__} is injected from the request's unit of work, and there is "
            "none here: a websocket handler (or a command) gets none. Open one where you "
            "need a session:\n\n"
            "    async with db:\n"
            "        ...  # db.read, db.write\n"
        )
    return unit


def _problem(cls: type, dbs: list[DatabaseCore], givers: _Givers) -> str | None:
    """Why a parameter annotated with ``cls`` cannot get a session, or None."""
    if len(dbs) == 1:
        return None
    base: type = ReadSession if issubclass(cls, ReadSession) else WriteSession
    keyword = "read_session_class" if base is ReadSession else "write_session_class"
    if not dbs:
        given = sorted(c.__name__ for c, d in givers.items() if d and issubclass(c, base))
        return (
            f"no database of this app gives {cls.__name__} (they give "
            f"{', '.join(given) or 'none'}). Annotate with the class of the database you "
            f"want, or pass {keyword}={cls.__name__} to the Database(...) it belongs to."
        )
    prefixes = ", ".join(f"config_prefix={db.config_prefix!r}" for db in dbs)
    example = "AnalyticsRead" if base is ReadSession else "AnalyticsWrite"
    return (
        f"{len(dbs)} databases of this app give {cls.__name__} ({prefixes}), so it does "
        "not say which one. Give every database but one session classes of its own, and "
        "annotate with the one you want:\n\n"
        f"    class {example}({base.__name__}): ...\n"
        f'    analytics = Database(config_prefix="ANALYTICS_DATABASE_", {keyword}={example})\n'
    )


def _handlers(app: Sanic[Any, Any]) -> Iterator[tuple[str, Any, bool]]:
    """Each route's handler as sanic-ext's injection sees it: ``(name, function,
    is_websocket)``, a class-based view's HTTP methods one by one."""
    for route in app.router.routes:
        handler = route.handler
        websocket = hasattr(handler, "is_websocket")
        view = getattr(handler, "view_class", None)
        if view is not None:
            for method, member in inspect.getmembers(view, inspect.isfunction):
                if method in _HTTP_METHODS:
                    yield f"{route.name}.{method}", member, websocket
            continue
        handler = getattr(handler, "__route_handler__", handler)
        if isinstance(handler, functools.partial):
            # A websocket route's handler is partial(app._websocket_handler, handler).
            handler = handler.args[0] if websocket and handler.args else handler.func
        yield route.name, handler, websocket


def _annotated(handler: Any) -> Iterator[tuple[str, type]]:
    """The parameters of ``handler`` annotated with a class, as sanic-ext reads them."""
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # not inspectable: sanic-ext injects nothing there either
        return
    for param, annotation in hints.items():
        if param != "return" and isinstance(annotation, type):
            yield param, annotation


def _session_parameters(handler: Any) -> Iterator[tuple[str, type]]:
    for param, annotation in _annotated(handler):
        if issubclass(annotation, (ReadSession, WriteSession)):
            yield param, annotation


def _sqlalchemy_session_parameters(handler: Any) -> Iterator[tuple[str, type]]:
    """Parameters annotated with SQLAlchemy's own session classes (``AsyncSession``,
    ``Session``), which apps that injected their sessions with sanic-ext have."""
    for param, annotation in _annotated(handler):
        if issubclass(annotation, (AsyncSession, Session)) and not issubclass(
            annotation, (ReadSession, WriteSession)
        ):
            yield param, annotation
