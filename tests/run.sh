#!/usr/bin/env bash
# The test suite from nothing (README, quick start command 2; .ci/run runs exactly this): the browser that
# tests/test_mlflow_ui.py drives, the virtual environment, then pytest. About 10 minutes on 2 cores.
# Arguments go to pytest: `bash tests/run.sh -m "not slow"` is the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  echo "tests/run.sh: installing Debian's chromium (tests/test_mlflow_ui.py drives it headless)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "error: /usr/bin/chromium is missing and this user cannot install it; expected Debian's chromium package" \
         "(as root: apt-get install chromium)" >&2
    exit 2
  fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -m pytest -q "$@"
