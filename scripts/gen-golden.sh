#!/usr/bin/env bash
# Regenerates tests/data/golden_bessel.json with tools/golden_bessel.py (about 7 s).
# Needs numpy, scipy and mpmath: the project venv (.venv) has them once train/requirements.txt is
# installed; otherwise `python3 -m pip install --user numpy scipy mpmath` (no venv needed).
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import numpy, scipy, mpmath' 2>/dev/null; then
    py=.venv/bin/python
elif ! python3 -c 'import numpy, scipy, mpmath' 2>/dev/null; then
    echo "gen-golden: numpy, scipy and mpmath are needed: python3 -m pip install --user numpy scipy mpmath" >&2
    exit 1
fi
"$py" tools/golden_bessel.py --out tests/data/golden_bessel.json "$@"
