"""Sphinx configuration of the sanic-sqlalchemy documentation (./scripts/docs builds it).

The site must work offline: no CDN, no remote fonts or scripts. Diagrams are drawn at build
time by Graphviz as SVG; intersphinx reads inventories stored in docs/_inventories/ (the
build has no network) and links to the public Python and SQLAlchemy documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.ext import intersphinx

import sanic_sqlalchemy

HERE = Path(__file__).parent

project = "sanic-sqlalchemy"
author = "the sanic-sqlalchemy authors"
copyright = "the sanic-sqlalchemy authors, MIT licence"
release = "0.2.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_tests", "_inventories", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3

graphviz_output_format = "svg"
graphviz_dot_args = [
    "-Gfontname=DejaVu Sans",
    "-Nfontname=DejaVu Sans",
    "-Efontname=DejaVu Sans",
    "-Gbgcolor=transparent",
]

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_inventories" / "python.inv")),
    "sqlalchemy": (
        "https://docs.sqlalchemy.org/en/21/",
        str(HERE / "_inventories" / "sqlalchemy.inv"),
    ),
}
intersphinx_timeout = 1

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True
# The sessions subclass SQLAlchemy's AsyncSession: its docstrings (and their references
# into SQLAlchemy's own docs) stay on SQLAlchemy's site, linked from the class.
autodoc_inherit_docstrings = False

# Types that signatures name but that are no public API of ours, and libraries without an
# inventory stored here (Sanic, pytest): shown as text, not links.
nitpick_ignore_regex = [
    (
        "py:class",
        r"sanic_sqlalchemy\.(database|engine|unit|settings|hooks|insight|tasks|listeners"
        r"|testing\.isolation)\..*",
    ),
    ("py:class", r"sanic\..*"),
    ("py:class", r"_pytest\..*"),
    ("py:class", r"P|T|_.*"),
    # A dataclass field's generic type, split at its comma by Sphinx (StatementLog).
    ("py:class", r"list\[tuple\[str"),
]
# Names that our modules import only for type checking, as SQLAlchemy documents them.
SQLALCHEMY_SHORT_NAMES = {
    "AsyncConnection": "sqlalchemy.ext.asyncio.AsyncConnection",
    "AsyncEngine": "sqlalchemy.ext.asyncio.AsyncEngine",
    "MetaData": "sqlalchemy.schema.MetaData",
    "Session": "sqlalchemy.orm.Session",
}
add_module_names = False

html_theme = "furo"
html_title = f"sanic-sqlalchemy {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}
html_permalinks_icon = "#"
html_show_sourcelink = False

del sanic_sqlalchemy


def resolve_short_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Link a SQLAlchemy class that a signature names by its short name."""
    target = SQLALCHEMY_SHORT_NAMES.get(node.get("reftarget"))
    if target is None:
        return None
    node["reftarget"] = target
    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Any) -> None:
    app.connect("missing-reference", resolve_short_names)
