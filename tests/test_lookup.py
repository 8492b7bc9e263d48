"""``module:attribute`` names, looked up once for the CLI, the pytest plugin and the relay:
each step's failure is its own exception, for each caller to word."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import MetaData

from sanic_sqlalchemy._lookup import (
    AttributeNotFound,
    ImportFailed,
    MalformedName,
    find,
)

from .apps import relay_app


def test_a_name_finds_its_object_along_a_dotted_path() -> None:
    """The module is imported and each part of the attribute's path looked up."""
    assert find("tests.apps.relay_app:db") is relay_app.db
    metadata = find("tests.apps.relay_app:Base.metadata")
    assert isinstance(metadata, MetaData)
    assert metadata is relay_app.Base.metadata


@pytest.mark.parametrize("spec", ["tests.apps.relay_app", ":db", "tests.apps.relay_app:", ""])
def test_a_name_without_both_parts_is_malformed(spec: str) -> None:
    """No colon, or nothing on one side of it: ``MalformedName``, before any import."""
    with pytest.raises(MalformedName) as raised:
        find(spec)
    assert raised.value.spec == spec


def test_a_missing_attribute_names_the_part_not_found() -> None:
    """The failing part of the path is told apart from the whole path."""
    with pytest.raises(AttributeNotFound) as raised:
        find("tests.apps.relay_app:Base.nothing.deeper")
    failure = raised.value
    assert (failure.module, failure.attribute, failure.name) == (
        "tests.apps.relay_app",
        "Base.nothing.deeper",
        "nothing",
    )


@pytest.mark.parametrize(
    "spec", ["lookup_no_such_package.module:x", "tests.apps.lookup_no_such_module:x"]
)
def test_a_module_that_does_not_exist_is_absent(spec: str) -> None:
    """The module, or a package above it, does not exist: ``absent``, with Python's
    ``ModuleNotFoundError`` as the cause."""
    with pytest.raises(ImportFailed) as raised:
        find(spec)
    failure = raised.value
    assert failure.absent
    assert isinstance(failure.error, ModuleNotFoundError)
    assert failure.__cause__ is failure.error


def test_a_module_that_fails_as_it_runs_is_not_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that exists but raises, or imports one that is missing: not ``absent``
    (the module's own error is for the caller to show)."""
    (tmp_path / "lookup_broken.py").write_text("1 / 0\n")
    (tmp_path / "lookup_importer.py").write_text("import lookup_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportFailed) as raised:
        find("lookup_broken:x")
    assert not raised.value.absent
    assert isinstance(raised.value.error, ZeroDivisionError)
    with pytest.raises(ImportFailed) as raised:
        find("lookup_importer:x")
    assert not raised.value.absent
    assert isinstance(raised.value.error, ModuleNotFoundError)
    assert raised.value.error.name == "lookup_missing_dependency"
