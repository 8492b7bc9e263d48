"""A task's arguments as stored: JSON, checked at ``defer`` so that the mistake shows
where it was made, not minutes later in another process."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import TaskArgumentError

#: The types whose values need no check (a float does: infinities have no JSON form).
_SIMPLE = frozenset({str, int, bool, type(None)})

#: Compact JSON; made once (``json.dumps`` with options makes an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``args`` and ``kwargs`` as JSON, or ``TaskArgumentError`` naming the argument
    (by position or keyword) that a JSON round trip would not give back."""
    simple = _SIMPLE
    for position, value in enumerate(args):
        if type(value) not in simple:
            _check(task, value, f"positional argument {position}")
    for name, value in kwargs.items():
        if type(value) not in simple:
            _check(task, value, f"keyword argument {name!r}")
    return _ENCODER.encode({"args": list(args), "kwargs": dict(kwargs)})


def decode(payload: str) -> tuple[list[Any], dict[str, Any]]:
    """The arguments a stored payload holds (tuples came back as lists)."""
    data = json.loads(payload)
    return list(data["args"]), dict(data["kwargs"])


#: The types whose values a JSON round trip gives back equal and of the same type
#: (floats are finite once ``encode`` accepted them).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def as_decoded(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]] | None:
    """What ``decode`` would give back for these arguments (already encoded), without
    the round trip, when each is a plain value (an id, a string); ``None`` otherwise."""
    plain = _PLAIN
    for value in args:
        if type(value) not in plain:
            return None
    for value in kwargs.values():
        if type(value) not in plain:
            return None
    return list(args), dict(kwargs)


def _check(task: str, value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if math.isfinite(value):
            return
        problem = f"{value!r} has no JSON form"
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(task, item, f"{where}[{index}]")
        return
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problem = f"the dict key {key!r} would come back as a string"
                break
            _check(task, item, f"{where}[{key!r}]")
        else:
            return
    else:
        problem = f"a {type(value).__name__} is not JSON"
    raise TaskArgumentError(
        f"{task}.defer(): {where}: {problem}. A task's arguments are stored as JSON with "
        "the unit's commit: pass plain values (str, int, float, bool, None, lists, "
        "dicts with str keys) such as an id, and load the object inside the task "
        "(await db.read.get(Model, id))."
    )
