"""A task's arguments as stored: JSON, checked at ``defer`` so that the mistake shows
where it was made, not minutes later in another process."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from ..errors import TaskArgumentError

#: Compact JSON; made once (``json.dumps`` with options makes an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))

Arguments = tuple[list[Any], dict[str, Any]]


class _NotPlain(Exception):
    """A value that ``encode_call`` leaves to the encoder."""


def _finite(value: float) -> str:
    if not math.isfinite(value):
        raise _NotPlain
    return float.__repr__(value)


#: JSON for plain values, by exact type: a JSON round trip gives them back equal and of
#: the same type (an ``IntEnum`` member or a ``str`` subclass would come back plain, so
#: they are not plain here).
_PLAIN: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    float: _finite,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _value: "null",
}

#: The types whose values ``encode`` need not check (a float does: infinities have no
#: JSON form).
_SIMPLE = frozenset(_PLAIN) - {float}


def encode_call(
    task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[str, Arguments | None]:
    """The payload of a call (``encode``) and, when every argument is a plain value (an
    id, a string), the arguments as ``decode`` gives them back, for a run in this
    process to skip decoding; ``None`` for them otherwise."""
    plain = _PLAIN
    try:
        if len(args) == 1:  # the usual call: one id
            value = args[0]
            positional = plain[type(value)](value)
        else:
            positional = ",".join([plain[type(value)](value) for value in args])
        if kwargs:
            named = ",".join(
                [
                    f"{encode_basestring_ascii(name)}:{plain[type(value)](value)}"
                    for name, value in kwargs.items()
                ]
            )
            return f'{{"args":[{positional}],"kwargs":{{{named}}}}}', (list(args), dict(kwargs))
    except (KeyError, _NotPlain):
        return encode(task, args, kwargs), None
    return f'{{"args":[{positional}],"kwargs":{{}}}}', (list(args), {})


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


def decode(payload: str) -> Arguments:
    """The arguments a stored payload holds (tuples came back as lists)."""
    data = json.loads(payload)
    return list(data["args"]), dict(data["kwargs"])


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
