#!/usr/bin/env bash
# The test command: set up .venv, make sure a browser is there for the MLflow UI test, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/venv.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the browser test will say so" >&2
fi
export STUDY_DATA_ROOT="${STUDY_DATA_ROOT:-$(cd .. && pwd)/shared/data}"
exec python -m pytest -q -p no:cacheprovider "$@"
