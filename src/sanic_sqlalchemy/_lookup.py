"""The object a ``module:attribute`` string names (``myapp.db:db``,
``myapp.models:Base.metadata``): the string split, the module imported, the dotted
attribute looked up.

The command line's targets, the pytest plugin's ini options and
``DATABASE_TASKS_BACKEND`` all name objects so.  ``find`` raises a ``LookupFailed``
saying which step failed; each caller turns it into its own error (``CommandError``,
``ConfigurationError``) with its own message, so it never leaves the package.  This
module imports nothing of the package.
"""

from __future__ import annotations

import importlib
from typing import Any


class LookupFailed(Exception):
    """``spec`` names no object (a subclass says why)."""

    def __init__(self, spec: str, module: str, attribute: str) -> None:
        super().__init__(spec)
        self.spec = spec
        self.module = module
        #: The whole dotted path after the colon.
        self.attribute = attribute


class MalformedName(LookupFailed):
    """``spec`` is not ``module:attribute``, both parts given."""


class ImportFailed(LookupFailed):
    """Importing ``module`` raised ``error`` (also this exception's ``__cause__``)."""

    def __init__(self, spec: str, module: str, attribute: str, error: Exception) -> None:
        super().__init__(spec, module, attribute)
        self.error = error

    @property
    def absent(self) -> bool:
        """Whether the module (or a package above it) does not exist, rather than
        failing as it ran (a module it imports may be the missing one)."""
        error = self.error
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        return missing is not None and (
            self.module == missing or self.module.startswith(f"{missing}.")
        )


class AttributeNotFound(LookupFailed):
    """``module`` has no ``name``, a part of the dotted ``attribute``."""

    def __init__(self, spec: str, module: str, attribute: str, name: str) -> None:
        super().__init__(spec, module, attribute)
        self.name = name


def find(spec: str) -> Any:
    """The object ``spec`` (``package.module:attribute.path``) names, importing its
    module; ``LookupFailed`` when it names none."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise MalformedName(spec, module_name, attribute)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as error:
        raise ImportFailed(spec, module_name, attribute, error) from error
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise AttributeNotFound(spec, module_name, attribute, name) from None
    return found
