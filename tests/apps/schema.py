"""The tables of ``tests.apps.server_app``, importable without creating the app."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint

metadata = MetaData()

#: Users written by the served app; ``pid`` is the worker process that inserted each.
server_users = Table(
    "server_app_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("email", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    UniqueConstraint("email", name="uq_server_app_users_email"),
)
