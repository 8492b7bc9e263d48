# Sourced by the scripts: a virtual environment in $VENV with the project installed in
# editable mode with every extra, plus the dependency groups named in $VENV_GROUPS
# (space-separated); with TEST_SANIC_EXT=1 also the sanic-ext group (default $VENV:
# ./.venv, or ./.venv-sanic-ext for that). Reinstalls when pyproject.toml or the groups
# change.
groups=()
for group in ${VENV_GROUPS:-}; do
    groups+=(--group "$group")
done
suffix="${VENV_GROUPS:+-${VENV_GROUPS// /-}}"
if [ "${TEST_SANIC_EXT:-}" = 1 ]; then
    VENV="${VENV:-$PWD/.venv-sanic-ext}"
    groups+=(--group sanic-ext)
    suffix="$suffix-sanic-ext"
fi
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)$suffix"
if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,postgresql,mysql]" ${groups[@]+"${groups[@]}"}
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
