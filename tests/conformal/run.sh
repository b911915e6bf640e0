#!/usr/bin/env bash
# The prediction sets of `proco-serve eval` checked against crepes, an established conformal
# library, on the probabilities that run exported (models/cifar10-lt/decisions). Creates or
# updates its own virtual environment, .venv-conformal, from tests/conformal/requirements.txt,
# and runs `pytest -q tests/conformal`; extra arguments go to pytest. Needs no server.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x .venv-conformal/bin/python ]; then python3 -m venv .venv-conformal; fi
.venv-conformal/bin/python -m pip install -q --disable-pip-version-check -r tests/conformal/requirements.txt
exec .venv-conformal/bin/python -m pytest -q -p no:cacheprovider tests/conformal "$@"
