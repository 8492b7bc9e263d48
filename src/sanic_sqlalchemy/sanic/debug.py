"""Debug mode only: say when a request's commit computed values its response was built
without.

A request's unit commits after its response is built (and before it is sent), so
values the database or SQLAlchemy compute at flush — primary keys, server and column
defaults, ``onupdate`` values, ``version_id_col`` counters — are not in the response
unless the handler flushed first: a response that shows them shows ``None`` or the old
value (a stale ``ETag``).  When an app starts in debug mode (``app.debug``), the write
sessions of its databases snapshot, as the commit after the response begins, the column
values of every object the commit's flush writes, and log a warning naming each
attribute that flush changed.  The listeners are installed at start-up and only for a
debug app: a production process has none, and no request pays anything.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request
from sanic.exceptions import SanicException
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from .phase import Phase

logger = logging.getLogger("sanic_sqlalchemy")

_SNAPSHOT = "sanic_sqlalchemy_commit_snapshot"
_MISSING = object()
#: The sync session classes already watched (listeners are per class, once).
_watched: set[type[Session]] = set()


def watch_commit_flushes(session_class: type[Session]) -> None:
    """Watch the commits of ``session_class`` (a write session's synchronous class)."""
    if session_class in _watched:
        return
    _watched.add(session_class)
    event.listen(session_class, "before_commit", _snapshot)
    event.listen(session_class, "after_flush_postexec", _compare)
    event.listen(session_class, "after_commit", _forget)
    event.listen(session_class, "after_rollback", _forget)


def _built_response_request() -> Any:
    """The current request, when it belongs to a debug app and its response is built."""
    try:
        request: Any = Request.get_current()
    except SanicException:
        return None
    if not request.app.debug or getattr(request, "_sqla_phase", None) in (
        None,
        Phase.ROUTED,
        Phase.HANDLING,
    ):
        return None
    return request


def _snapshot(session: Session) -> None:
    if session.in_nested_transaction():
        return
    request = _built_response_request()
    if request is None:
        return
    objects = [*session.new, *session.dirty]
    if not objects:
        return
    snapshot = []
    for obj in objects:
        state = inspect(obj)
        before = {
            attr.key: state.dict.get(attr.key, _MISSING) for attr in state.mapper.column_attrs
        }
        # The object itself is kept: once flushed, the session holds it weakly only, and
        # the handler that made it has returned.
        snapshot.append((obj, state, before))
    session.info[_SNAPSHOT] = (request, snapshot)


def _compare(session: Session, _flush_context: Any) -> None:
    taken = session.info.pop(_SNAPSHOT, None)
    if taken is None:
        return
    request, snapshot = taken
    changed = {
        f"{state.class_.__name__}.{key}"
        for _obj, state, before in snapshot
        for key, value in before.items()
        if _differs(state.dict.get(key, _MISSING), value)
    }
    if changed:
        logger.warning(
            "%s %s: the commit after the response was built changed %s (values computed "
            "at flush: primary keys, server and column defaults, onupdate values, "
            "version_id_col counters). The request's unit commits after its response "
            "is built, so a response that shows them shows the values from before; "
            "call `await db.write.flush()` before building it. (Checked in debug mode "
            "only.)",
            request.method,
            request.path,
            ", ".join(sorted(changed)),
        )


def _differs(after: object, before: object) -> bool:
    # Expired by the flush (a server-side onupdate not fetched back) counts as changed.
    return after is not before and (after is _MISSING or before is _MISSING or after != before)


def _forget(session: Session) -> None:
    session.info.pop(_SNAPSHOT, None)
