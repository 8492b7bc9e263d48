"""Sphinx configuration of the sanic-sqlalchemy documentation (./scripts/docs builds it).

The site must work offline: no CDN, no remote fonts or scripts. Diagrams are drawn at build
time by Graphviz as SVG; intersphinx reads inventories stored in docs/_inventories/ (the
build has no network) and links to the public Python and SQLAlchemy documentation.
"""

from __future__ import annotations

from pathlib import Path

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
    "sphinx.ext.napoleon",
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
intersphinx_disabled_reftypes = ["*"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True
add_module_names = False

html_theme = "furo"
html_title = f"sanic-sqlalchemy {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}
html_permalinks_icon = "#"
html_show_sourcelink = False

del sanic_sqlalchemy
