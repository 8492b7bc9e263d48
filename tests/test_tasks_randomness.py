"""Task ids and claims come from blocks of OS randomness: never the same twice, across
threads and across a fork."""

from __future__ import annotations

import os
import threading
import uuid

from sanic_sqlalchemy.tasks.deferred import new_task_id
from sanic_sqlalchemy.tasks.randomness import random_hex32
from sanic_sqlalchemy.tasks.sql import new_claim


def test_ids_are_version_4_uuids_and_claims_are_32_hex_digits() -> None:
    task_id = new_task_id()
    assert str(uuid.UUID(task_id)) == task_id
    assert uuid.UUID(task_id).version == 4
    claim = new_claim()
    assert len(claim) == 32 and int(claim, 16) >= 0


def test_threads_never_get_the_same_slice_across_many_blocks() -> None:
    taken: list[list[str]] = [[] for _ in range(8)]

    def take(into: list[str]) -> None:
        for _ in range(2_000):  # 16,000 in all: more than 60 blocks of 256
            into.append(random_hex32())

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for into in taken for value in into]
    assert len(every) == 16_000
    assert len(set(every)) == 16_000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    random_hex32()  # the parent's block is in use: a child copies it, counter and all
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        try:
            os.write(writing, ",".join(new_task_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        childs = set(pipe.read().split(","))
    os.waitpid(child, 0)
    parents = {new_task_id() for _ in range(4)}
    assert len(childs) == 4
    assert not childs & parents
