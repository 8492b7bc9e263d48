"""The commit rule, in one place: which ends of a unit commit and which roll back.

A unit commits when its work returns, or raises an exception that carries an HTTP
status below 400 (a redirect raised as an exception, say); it rolls back on any other
exception.  Work that returns an HTTP response (anything with an integer ``status``
and ``headers``) commits only below 400.  The Sanic layer adds one case of its own: a
client that hung up rolls back.
"""

from __future__ import annotations

#: The first status that rolls a unit back: 2xx and 3xx commit, 4xx and 5xx do not.
FIRST_FAILING_STATUS = 400


def status_commits(status: int) -> bool:
    """Whether a response with ``status`` commits its units."""
    return status < FIRST_FAILING_STATUS


def error_commits(error: BaseException | None) -> bool:
    """Whether a unit left with ``error`` (``None``: no error) commits."""
    if error is None:
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and status_commits(status)


def result_commits(result: object) -> bool:
    """Whether a unit whose work returned ``result`` commits: anything but an HTTP
    response of status 400 or more."""
    status = getattr(result, "status", None)
    if isinstance(status, bool) or not isinstance(status, int) or not hasattr(result, "headers"):
        return True
    return status_commits(status)
