"""The demo shop behaves as the README says: receipts only after a successful commit.

Its tests use the pytest plugin the way an application would: the fixture
``sanic_sqlalchemy_database`` names the shop's ``db``, and each test runs rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sanic import Sanic

from sanic_sqlalchemy import Database


@pytest.fixture
async def sanic_sqlalchemy_database(tmp_path: Path) -> AsyncIterator[Database]:
    """The shop's ``db`` on a fresh SQLite file, its tables created."""
    Sanic.test_mode = True
    from examples.shop import app as shop

    shop.db.init_app(shop.app, url=f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    shop.RECEIPTS.clear()
    await shop.db.create_all(shop.Base.metadata)
    yield shop.db
    await shop.db.dispose()


async def test_demo_shop_flow(rolled_back_db: Database, serve: Any) -> None:
    """Orders commit with their receipt; an invalid order leaves no row and no receipt."""
    from examples.shop import app as shop

    served = await serve(shop.app)
    client = served.client

    created = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
    assert created.status_code == 201
    user_id = created.json()["id"]
    duplicate = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
    assert duplicate.status_code == 422

    order = await client.post(f"/users/{user_id}/orders", json={"item": "book", "quantity": 2})
    assert order.status_code == 201
    assert (await client.get("/receipts")).json() == [
        {"order_id": order.json()["id"], "to": "ada@example.com", "item": "book"}
    ]

    invalid = await client.post(f"/users/{user_id}/orders", json={"item": "", "quantity": 2})
    assert invalid.status_code == 422
    assert len((await client.get("/receipts")).json()) == 1
    user = (await client.get(f"/users/{user_id}")).json()
    assert [o["item"] for o in user["orders"]] == ["book"]

    shipped = await client.patch(f"/orders/{order.json()['id']}", json={"status": "shipped"})
    assert shipped.json()["status"] == "shipped"
    assert (await client.get("/users/999")).status_code == 404


async def test_invalid_order_drops_its_receipt(
    rolled_back_db: Database, serve: Any, capture_on_commit: Callable[..., Any]
) -> None:
    """The receipt of an order that fails validation is registered, then dropped."""
    from examples.shop import app as shop

    client = (await serve(shop.app)).client
    created = await client.post("/users", json={"name": "Bo", "email": "bo@example.com"})
    orders = f"/users/{created.json()['id']}/orders"
    with capture_on_commit() as callbacks:
        good = await client.post(orders, json={"item": "pen"})
        bad = await client.post(orders, json={"item": ""})
    assert (good.status_code, bad.status_code) == (201, 422)
    assert [(c.func, c.committed) for c in callbacks] == [
        (shop.send_receipt, True),
        (shop.send_receipt, False),
    ]
    assert shop.RECEIPTS == []


async def test_user_page_queries(
    rolled_back_db: Database, serve: Any, assert_max_queries: Callable[[int], Any]
) -> None:
    """A user's page costs two queries however many orders the user has."""
    from examples.shop import app as shop

    client = (await serve(shop.app)).client
    async with rolled_back_db:
        user = shop.User(name="Cy", email="cy@example.com")
        rolled_back_db.write.add(user)
        await rolled_back_db.write.flush()
        for item in ("a", "b", "c"):
            rolled_back_db.write.add(shop.Order(user_id=user.id, item=item, quantity=1))
    with assert_max_queries(2):
        page = await client.get(f"/users/{user.id}")
    assert len(page.json()["orders"]) == 3
