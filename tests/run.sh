#!/usr/bin/env bash
# The test suite from nothing (README, quick start command 2; .ci/run runs exactly this): the browser that
# tests/test_mlflow_ui.py drives, the virtual environment at the committed constraints, then pytest. About 10
# minutes on 2 cores. Arguments go to pytest: `bash tests/run.sh -m "not slow"` is the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  echo "tests/run.sh: /usr/bin/chromium is missing; installing Debian's chromium package and its required" \
       "dependencies only (apt-get install --no-install-recommends chromium), for tests/test_mlflow_ui.py," \
       "which drives it headless" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "error: /usr/bin/chromium is missing and this user cannot install it; expected Debian's chromium package" \
         "(as root: apt-get install --no-install-recommends chromium)" >&2
    exit 2
  fi
  $sudo apt-get update -qq
  echo "tests/run.sh: apt-get will install: $(apt-get install -s --no-install-recommends chromium |
       awk '/^Inst/ {printf "%s ", $2}')" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
fi
echo "tests/run.sh: creating .venv with metaaug[pipeline] and requirements/dev.txt (pytest, psutil) at the" \
     "versions pinned in requirements/constraints.txt" >&2
python3 -m venv .venv
.venv/bin/pip install -q -c requirements/constraints.txt -e ".[pipeline]" -r requirements/dev.txt
.venv/bin/python -m pytest -q "$@"
