"""A process for the durable-task tests (``tests/test_tasks_processes.py``).

``fork``: loads everything once, then forks a committer for each line read on stdin;
a committer commits units that insert an order and defer its receipt, forever (one unit
in ten defers, then rolls back), printing ``ready PID`` after its first commit; the
parent kills each with SIGKILL at a random moment (forking, not starting a process,
makes a hundred kills take seconds).  ``work``: runs a dispatcher until no task is
waiting or running.  Each task appends a line to ``TASKS_EFFECTS`` (its
external effect) and inserts a row (its database effect).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database, current_task


class Base(DeclarativeBase):
    pass


class KillOrder(Base):
    __tablename__ = "kill_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String(20))


class KillReceipt(Base):
    __tablename__ = "kill_receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer)
    doomed: Mapped[int] = mapped_column(Integer)


db = Database()

#: Seconds a receipt task dawdles at most (at random), so that a kill often lands
#: mid-run: set in the committers only, the test's drain afterwards need not wait.
DAWDLE = 0.0


class Doomed(Exception):
    """Rolls a unit back after it deferred its receipt."""


def _effect(line: str) -> None:
    with open(os.environ["TASKS_EFFECTS"], "a") as effects:
        effects.write(line + "\n")


@db.task(name="kill.receipt")
async def receipt(order_id: int, doomed: bool = False) -> None:
    task = current_task()
    assert task is not None
    _effect(f"receipt {order_id} {int(doomed)} {task.id}")
    db.write.add(KillReceipt(order_id=order_id, doomed=int(doomed)))
    if DAWDLE:
        await asyncio.sleep(random.random() * DAWDLE)


@db.task(name="kill.effect")
async def effect(number: int) -> None:
    task = current_task()
    assert task is not None
    _effect(f"effect {number} {task.id}")
    db.write.add(KillReceipt(order_id=number, doomed=0))


async def commit_forever() -> None:
    ready = False
    while True:
        try:
            async with db:
                order = KillOrder(note="order")
                db.write.add(order)
                await db.write.flush()
                doomed = random.random() < 0.1
                receipt.defer(order.id, doomed)
                if doomed:
                    raise Doomed
        except Doomed:
            pass
        if not ready:
            ready = True
            sys.stdout.write(f"ready {os.getpid()}\n")
            sys.stdout.flush()


async def work_until_empty() -> None:
    worker = asyncio.create_task(db.tasks.work(concurrency=8, grace=5))
    while True:
        await asyncio.sleep(0.2)
        counts = await db.tasks.counts()
        if counts["pending"] == 0 and counts["running"] == 0:
            break
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await db.dispose()


def fork_committers() -> None:
    """A committer per line on stdin, each in a forked child; none connects before it
    forks (engines are made on first use, in the child's own event loop)."""
    global DAWDLE
    DAWDLE = 0.01
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the killed children
    for _line in sys.stdin:
        if os.fork() == 0:
            random.seed()  # each child its own moments to roll back
            try:
                asyncio.run(commit_forever())
            except BaseException as error:
                # Instead of the "ready" the parent waits for: why this child stopped.
                sys.stdout.write(f"failed {error!r}\n".replace("\n", " ").strip() + "\n")
                sys.stdout.flush()
            os._exit(1)


def main() -> None:
    db.configure_from(url=os.environ["TASKS_URL"], pool_size=10)
    if sys.argv[1] == "fork":
        fork_committers()
    else:
        asyncio.run(work_until_empty())


if __name__ == "__main__":
    main()
