#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with everything installed (the PyTorch extra
# included), Debian's Chromium for the web UI tests (apt-get, as root or through sudo), and the
# model files in ./models, mirrored from ../shared/models when it exists, with every checksum
# checked against serverless/common/models.yaml. Safe to run again: it only fills in what is missing.
#
#   bash scripts/setup.sh            # PYTHON=/path/to/python3.11 to choose the interpreter
#                                    # SHARED_MODELS=DIR to mirror from somewhere else
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "setup: Python 3.11 is required; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
echo "setup: installing the project and its dependencies into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[torch,test]"

# The web UI's tests drive Debian's Chromium (Playwright never downloads a browser here).
if [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's chromium and chromium-driver for the web UI tests"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium chromium-driver >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || { echo "setup: could not install chromium (apt-get install chromium chromium-driver)" >&2; exit 1; }
fi

shared_models=${SHARED_MODELS:-../shared/models}
if [ -d "$shared_models" ]; then
  .venv/bin/python -m serverless.common.model_files mirror --from "$shared_models"
else
  echo "setup: $shared_models does not exist; checking what is already in place"
  .venv/bin/python -m serverless.common.model_files status
fi
echo "setup: done"
