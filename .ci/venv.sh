# Sourced by run_all.sh and tests/run.sh: create or reuse .venv in the project root and install the
# project with its pinned dependencies.  Re-installs only when pyproject.toml changes.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "setting up $VENV (torch, mlflow, ...; a few minutes the first time)" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, torchvision, mlflow, study" || { echo "set-up failed" >&2; exit 1; }
  rm -f "$VENV"/.installed-* && touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
