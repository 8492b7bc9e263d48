"""What every variant shares: the table, the ORM model, the JSON shape and the routes.

All variants render a user with :func:`user_json` and answer with ``sanic.response.json``
so that identical data gives byte-identical bodies.  Nothing here touches a database.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Largest page a client may ask for.
MAX_LIMIT = 100

metadata = MetaData()

#: The Core table (SQLAlchemy Core variant).
users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("email", String(200), nullable=False),
    Column("visits", Integer, nullable=False),
)


class Base(DeclarativeBase):
    pass


class User(Base):
    """The ORM model (hand-written ORM, advanced-alchemy and ours)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    visits: Mapped[int] = mapped_column(Integer)


def user_json(id: int, name: str, email: str, visits: int) -> dict[str, Any]:
    return {"id": id, "name": name, "email": email, "visits": visits}


def user_from_orm(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email, "visits": user.visits}


def user_from_row(row: Any) -> dict[str, Any]:
    """From an asyncpg Record, a SQLAlchemy Row or a tuple in column order."""
    return {"id": row[0], "name": row[1], "email": row[2], "visits": row[3]}


def not_found() -> HTTPResponse:
    return json({"error": "not found"}, status=404)


def noop_response() -> HTTPResponse:
    return json({"ok": True})


def page_limit(request: Request) -> int:
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        limit = 50
    return max(1, min(limit, MAX_LIMIT))


def new_user_fields(request: Request) -> tuple[str, str]:
    body = request.json or {}
    return str(body["name"]), str(body["email"])


def new_app(name: str) -> Sanic[Any, Any]:
    """A Sanic app configured the same way for every variant."""
    app = Sanic(name)
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.AUTO_RELOAD = False
    app.config.KEEP_ALIVE_TIMEOUT = 75
    for logger in ("sanic.root", "sanic.error", "sanic.server", "sanic.access"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    return app


def peer_pool_options() -> dict[str, Any]:
    """Pool sizing of the hand-written SQLAlchemy variants and advanced-alchemy.

    ``BENCH_PEER_POOL=fixed`` (the default) gives them the pool ours has by default
    (10 connections, no overflow) so that the comparison measures code, not pool
    sizing; ``BENCH_PEER_POOL=sqlalchemy`` leaves SQLAlchemy's defaults (5 + 10 overflow).
    """
    import os

    if os.environ.get("BENCH_PEER_POOL", "fixed") == "sqlalchemy":
        return {}
    return {"pool_size": 10, "max_overflow": 0}
