"""sanic-sqlalchemy with one no-op ``unit_end`` listener: what a listener costs a
request (issue 19), beside ``ours``, which has none."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from sanic_sqlalchemy.listeners import UnitEnd

from . import ours


def ignore(event: UnitEnd) -> None:
    """Does nothing: the cost measured is the listener machinery's."""


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    app = ours.create_app(url, backend)
    ours.db.listen("unit_end", ignore)
    return app
