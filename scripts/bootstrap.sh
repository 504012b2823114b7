#!/usr/bin/env bash
# Create (or update) the project environment in .venv at the repository root.
# Installs torch 2.14.1 with torchvision 0.29.1 when they are not both importable: the pair
# whose torchvision loads (the detection extra needs it). That build is the CUDA one and runs on
# CPU-only machines too. Set INTERNIMAGE_TORCH to choose other requirements, e.g.
# INTERNIMAGE_TORCH="torch==2.13.0" for the smaller CPU build without detection.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # the requirements are meant to split into words
    .venv/bin/python -m pip install --quiet ${INTERNIMAGE_TORCH:-torch==2.14.1 torchvision==0.29.1}
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
