#!/usr/bin/env bash
# Create (or update) the project environment in .venv at the repository root.
#
# Installs torch 2.14.1 with torchvision 0.29.1 when they are not both importable: the pair
# whose torchvision loads (the detection extra needs it). That build is the CUDA one and runs on
# CPU-only machines too. Set INTERNIMAGE_TORCH to choose other requirements, e.g.
# INTERNIMAGE_TORCH="torch==2.13.0" for the smaller CPU build without detection.
#
# Every package is installed at the version in constraints.txt, the set the test suite last
# passed with (scripts/refresh_constraints.sh remakes it), so that a fresh machine gets what CI
# tested rather than whatever is newest today. The file is for the Python version named in its
# first line; another Python, or INTERNIMAGE_UNCONSTRAINED=1, installs the newest versions that
# pyproject.toml allows. With INTERNIMAGE_TORCH the torch stack's own pins are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
constraints=()
if [ "${INTERNIMAGE_UNCONSTRAINED:-0}" != 1 ]; then
    locked=$(sed -n 's/^# python \([0-9.]*\)$/\1/p' constraints.txt | head -n 1)
    current=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$locked" = "$current" ]; then
        file=constraints.txt
        if [ -n "${INTERNIMAGE_TORCH:-}" ]; then
            # The chosen torch build brings its own torchvision, triton and CUDA libraries.
            file=$(mktemp)
            trap 'rm -f "$file"' EXIT
            grep -v -i -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]*|cuda-[a-z-]*)==' \
                constraints.txt >"$file"
        fi
        constraints=(--constraint "$file")
    else
        echo "bootstrap: constraints.txt is for Python $locked, this is $current: installing" \
             "the newest versions pyproject.toml allows" >&2
    fi
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # the requirements are meant to split into words
    .venv/bin/python -m pip install --quiet "${constraints[@]}" \
        ${INTERNIMAGE_TORCH:-torch==2.14.1 torchvision==0.29.1}
fi
.venv/bin/python -m pip install --quiet "${constraints[@]}" -e ".[test]"
