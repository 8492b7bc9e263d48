# Sourced by the scripts: a virtual environment in $VENV (default ./.venv) with the
# project installed in editable mode with every extra. Reinstalls when pyproject.toml
# changes.
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,postgresql,mysql]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
