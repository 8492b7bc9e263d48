"""The front door: exactly the public names of the contract, guarded against drift."""

from __future__ import annotations

import sanic_sqlalchemy
from sanic_sqlalchemy import (
    ConfigurationError,
    EngineNotInitialisedError,
    NoActiveUnitError,
    ReadOnlyError,
    SanicSQLAlchemyError,
)

CONTRACT = {
    "ConfigurationError",
    "Database",
    "EngineNotInitialisedError",
    "NoActiveUnitError",
    "ReadOnlyError",
    "ReadSession",
    "SanicSQLAlchemyError",
    "WriteSession",
    "current_task",
}


def test_all_is_the_contract() -> None:
    """``__all__`` lists exactly the names of PRODUCT.md, sorted."""
    assert set(sanic_sqlalchemy.__all__) == CONTRACT
    assert sanic_sqlalchemy.__all__ == sorted(sanic_sqlalchemy.__all__)


def test_namespace_matches_all() -> None:
    """Every public attribute of the package is in ``__all__`` and the reverse."""
    public = {
        name
        for name, value in vars(sanic_sqlalchemy).items()
        if not name.startswith("_") and not isinstance(value, type(sanic_sqlalchemy))
    }
    assert public == set(sanic_sqlalchemy.__all__)


def test_every_error_derives_from_the_base() -> None:
    """All library errors are ``SanicSQLAlchemyError``s; misuse errors are RuntimeErrors."""
    for error in (ConfigurationError, EngineNotInitialisedError, NoActiveUnitError, ReadOnlyError):
        assert issubclass(error, SanicSQLAlchemyError)
    assert issubclass(NoActiveUnitError, RuntimeError)
    assert issubclass(EngineNotInitialisedError, RuntimeError)


def test_package_is_typed() -> None:
    """The package ships ``py.typed`` so that type checkers use its annotations."""
    from importlib.resources import files

    assert files("sanic_sqlalchemy").joinpath("py.typed").is_file()
