"""A small shop on sanic-sqlalchemy: users, orders, and receipts sent after commit.

Run it with ``./scripts/demo`` (SQLite in ``shop.db``), or on PostgreSQL with
``SANIC_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test ./scripts/demo``.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import NotFound
from sanic.response import HTTPResponse, json
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database

log = logging.getLogger("shop")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "shop_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200), unique=True)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email}


class Order(Base):
    __tablename__ = "shop_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("shop_users.id"))
    item: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default="placed")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "item": self.item,
            "quantity": self.quantity,
            "status": self.status,
        }


db = Database()
app = Sanic("shop")
app.config.setdefault("DATABASE_URL", "sqlite+aiosqlite:///shop.db")
db.init_app(app)

#: Receipts "sent" so far; a real shop would e-mail them.
RECEIPTS: list[dict[str, Any]] = []


@app.before_server_start
async def create_tables(_app: Sanic) -> None:
    async with db.engines.write.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


def send_receipt(order_id: int, email: str, item: str) -> None:
    """Runs only after the order is committed: never for an order that was rolled back."""
    receipt = {"order_id": order_id, "to": email, "item": item}
    RECEIPTS.append(receipt)
    log.info("receipt sent: %s", receipt)


class Invalid(Exception):
    status_code = 422


@app.exception(Invalid)
async def invalid(_request: Request, error: Exception) -> HTTPResponse:
    return json({"error": str(error)}, status=422)


def _fields(request: Request, *names: str) -> dict[str, Any]:
    body = request.json if isinstance(request.json, dict) else {}
    missing = [name for name in names if not body.get(name)]
    if missing:
        raise Invalid(f"missing fields: {', '.join(missing)}")
    return {name: body[name] for name in names}


@app.get("/users")
async def list_users(_request: Request) -> HTTPResponse:
    users = (await db.read.execute(select(User).order_by(User.id))).scalars().all()
    return json([user.to_json() for user in users])


@app.get("/users/<user_id:int>")
async def get_user(_request: Request, user_id: int) -> HTTPResponse:
    user = await db.read.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    orders = (await db.read.execute(select(Order).where(Order.user_id == user_id))).scalars().all()
    return json({**user.to_json(), "orders": [order.to_json() for order in orders]})


@app.post("/users")
async def create_user(request: Request) -> HTTPResponse:
    fields = _fields(request, "name", "email")
    taken = await db.read.scalar(select(func.count()).where(User.email == fields["email"]))
    if taken:
        raise Invalid(f"{fields['email']} is already registered")
    user = User(**fields)
    db.write.add(user)
    await db.write.flush()
    return json(user.to_json(), status=201)


@app.post("/users/<user_id:int>/orders")
async def place_order(request: Request, user_id: int) -> HTTPResponse:
    user = await db.read.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    body = request.json if isinstance(request.json, dict) else {}
    order = Order(user_id=user_id, item=body.get("item") or "", quantity=body.get("quantity", 1))
    db.write.add(order)
    await db.write.flush()
    db.on_commit(send_receipt, order.id, user.email, order.item)
    # Validation after the insert: the 422 rolls the order back and the receipt,
    # registered above, is never sent.
    if not order.item or not isinstance(order.quantity, int) or order.quantity < 1:
        raise Invalid("an order needs an item and a positive quantity")
    return json(order.to_json(), status=201)


@app.patch("/orders/<order_id:int>")
async def update_order(request: Request, order_id: int) -> HTTPResponse:
    order = await db.write.get(Order, order_id)
    if order is None:
        raise NotFound(f"no order {order_id}")
    status = (request.json or {}).get("status")
    if status not in ("placed", "shipped", "cancelled"):
        raise Invalid("status must be placed, shipped or cancelled")
    order.status = status
    return json(order.to_json())


@app.get("/receipts")
async def receipts(_request: Request) -> HTTPResponse:
    return json(RECEIPTS)
