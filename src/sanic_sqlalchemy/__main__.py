"""``python -m sanic_sqlalchemy``: the ``sanic-sqlalchemy`` command."""

import sys

from .cli import main

sys.exit(main())
