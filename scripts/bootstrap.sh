#!/usr/bin/env bash
# Create (or update) the project environment in .venv at the repository root.
# Uses the CPU build of torch 2.13.0 when no torch is installed yet, so that a plain
# install does not pull the CUDA wheels; set INTERNIMAGE_TORCH to choose another spec.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "${INTERNIMAGE_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
