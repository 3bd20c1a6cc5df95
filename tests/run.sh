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
# Data and the authors' checkpoints: the shared copies beside the project, else fetched (and verified)
# into ./data and ./pretrained/authors.  Offline, the tests that need them skip (fail under CI) and say so.
export STUDY_DATA_ROOT="${STUDY_DATA_ROOT:-$(cd .. && pwd)/shared/data}"
if [ ! -d "$STUDY_DATA_ROOT/cifar-10-batches-bin" ] && [ ! -d "$STUDY_DATA_ROOT/cifar-10-batches-py" ]; then
  export STUDY_DATA_ROOT="$PWD/data"
  python -m study fetch cifar10 --data-root "$STUDY_DATA_ROOT" || echo "tests/run.sh: no CIFAR-10" >&2
fi
export STUDY_AUTHORS_DIR="${STUDY_AUTHORS_DIR:-$(cd .. && pwd)/shared/pretrained/authors}"
for f in RN56_ORG RN56_1616-128 DNBC4036-CSG1212-72 SHUFFLENETV2 SHUFFLENETV2_CSG; do
  if [ ! -f "$STUDY_AUTHORS_DIR/$f.t7" ]; then
    export STUDY_AUTHORS_DIR="$PWD/pretrained/authors"
    python -m study fetch authors --authors-dir "$STUDY_AUTHORS_DIR" || echo "tests/run.sh: no checkpoints" >&2
    break
  fi
done
# one worker per core (pytest-xdist); each test file stays in one worker, so its module fixtures are built once
exec python -m pytest -q -p no:cacheprovider -n auto --dist loadfile "$@"
