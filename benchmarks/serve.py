"""Start one variant as a single-process Sanic server (the harness pins it to a core).

python serve.py VARIANT BACKEND URL PORT
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.apps import VARIANTS


def main() -> None:
    variant, backend, url, port = sys.argv[1:5]
    module_name, backends, _label = VARIANTS[variant]
    if backend not in backends:
        raise SystemExit(f"{variant} does not run on {backend}")
    module = importlib.import_module(f"bench.apps.{module_name}")
    app = module.create_app(url, backend)
    app.run(host="127.0.0.1", port=int(port), single_process=True, access_log=False)


if __name__ == "__main__":
    main()
