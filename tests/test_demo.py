"""The demo shop behaves as the README says: receipts only after a successful commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanic import Sanic


async def test_demo_shop_flow(serve: Any, tmp_path: Path) -> None:
    """Orders commit with their receipt; an invalid order leaves no row and no receipt."""
    Sanic.test_mode = True
    from examples.shop import app as shop

    shop.db.init_app(shop.app, url=f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    shop.RECEIPTS.clear()
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
