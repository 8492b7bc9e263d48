"""Write ``sqlalchemy.inv``: an intersphinx inventory of SQLAlchemy 2.0's documentation.

The docs build has no network, so the inventories it links with are stored beside this
script. SQLAlchemy publishes its ``objects.inv`` only on its website; this rebuilds an
equivalent one from the reStructuredText sources of its documentation (a checkout of
SQLAlchemy's ``rel_2_0`` branch) and the installed ``sqlalchemy`` package: every
``autoclass``, ``autofunction``, ``autoexception``, ``autodata`` and ``automodule`` with
``:members:`` becomes an entry pointing at ``<page>.html#<dotted name>``, as Sphinx names
its anchors. Run it again after upgrading SQLAlchemy:

    python docs/_inventories/sqlalchemy_inventory.py PATH/TO/sqlalchemy/doc/build
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import zlib
from pathlib import Path

import sqlalchemy

DIRECTIVE = re.compile(r"^\.\. (auto\w+|module|currentmodule|class|function|data)::\s*(\S+)")
OPTION = re.compile(r"^\s+:(\w[\w-]*):")
ROLES = {
    "autoclass": "class",
    "class": "class",
    "autoexception": "exception",
    "autofunction": "function",
    "function": "function",
    "autodata": "data",
    "data": "data",
}


def resolve(dotted: str) -> object | None:
    """The object that ``dotted`` names in the installed SQLAlchemy, or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def role_of(obj: object, default: str) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return default


def members(cls: type) -> list[tuple[str, str]]:
    """The public methods and attributes a ``:members:`` autoclass documents."""
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property) or inspect.isdatadescriptor(value):
            found.append((name, "attribute"))
        elif callable(value) or isinstance(value, (classmethod, staticmethod)):
            found.append((name, "method"))
    return found


def entries(doc_root: Path) -> dict[str, tuple[str, str, str]]:
    """``{name: (py role, page, anchor)}`` for every documented object."""
    found: dict[str, tuple[str, str, str]] = {}
    for path in sorted(doc_root.rglob("*.rst")):
        page = path.relative_to(doc_root).with_suffix(".html").as_posix()
        module = ""
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            match = DIRECTIVE.match(line)
            if not match:
                continue
            kind, target = match.groups()
            options = set()
            for following in lines[index + 1 : index + 12]:
                option = OPTION.match(following)
                if option:
                    options.add(option.group(1))
                elif following.strip():
                    break
            if kind in ("module", "currentmodule", "automodule"):
                module = target
                if kind == "module" or kind == "automodule":
                    found.setdefault(target, ("module", page, target))
                if kind == "automodule" and "members" in options:
                    mod = resolve(target)
                    for name, obj in vars(mod).items() if mod else ():
                        if name.startswith("_") or getattr(obj, "__module__", None) != target:
                            continue
                        dotted = f"{target}.{name}"
                        found.setdefault(dotted, (role_of(obj, "data"), page, dotted))
                continue
            if kind not in ROLES:
                continue
            dotted = target if target.startswith("sqlalchemy") else f"{module}.{target}"
            obj = resolve(dotted)
            role = role_of(obj, ROLES[kind])
            names = [dotted]
            # Also under the module that defines it, as annotations name it
            # (sqlalchemy.sql.schema.MetaData for sqlalchemy.schema.MetaData).
            defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            if defined.startswith("sqlalchemy.") and defined != dotted:
                names.append(defined)
            for name in names:
                found.setdefault(name, (role, page, dotted))
                if inspect.isclass(obj) and "members" in options:
                    for member, member_role in members(obj):
                        anchor = f"{dotted}.{member}"
                        found.setdefault(f"{name}.{member}", (member_role, page, anchor))
    return found


def write(found: dict[str, tuple[str, str, str]], out: Path) -> None:
    """Write the inventory: an entry's anchor is its documented name, whatever it is filed under."""
    header = (
        "# Sphinx inventory version 2\n"
        "# Project: SQLAlchemy\n"
        f"# Version: {'.'.join(sqlalchemy.__version__.split('.')[:2])}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(
        f"{name} py:{role} 1 {page}#{'$' if anchor == name else anchor} -\n"
        for name, (role, page, anchor) in sorted(found.items())
    )
    out.write_bytes(header.encode() + zlib.compress(body.encode()))


if __name__ == "__main__":
    doc_root = Path(sys.argv[1])
    found = entries(doc_root)
    write(found, Path(__file__).with_name("sqlalchemy.inv"))
    print(f"{len(found)} entries from {doc_root}")
