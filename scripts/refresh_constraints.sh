#!/usr/bin/env bash
# Remake constraints.txt: install the project with its test extras into a throwaway
# environment at the newest versions pyproject.toml allows, run the test suite there, and only
# when it passes write that environment's exact versions to constraints.txt (atomically).
#
#   bash scripts/refresh_constraints.sh            # the README's test command decides
#   PYTHON=python3.11 bash scripts/refresh_constraints.sh
#
# Takes the bootstrap's time plus one test run (about 10 minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
"$work/venv/bin/python" -m pip install --quiet -e ".[test]"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider
version=$("$work/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
{
    echo "# python $version"
    echo "# The exact versions the test suite last passed with; scripts/bootstrap.sh installs"
    echo "# them. Remade by scripts/refresh_constraints.sh on $(date -u +%Y-%m-%d)."
    "$work/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^-e '
} >constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) packages for Python $version"
