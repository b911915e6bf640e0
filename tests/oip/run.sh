#!/usr/bin/env bash
# The Open Inference Protocol v2 tests: the real Triton clients (tritonclient[http,grpc], pinned in
# tests/oip/requirements.txt) against target/debug/proco-serve, REST and gRPC.
#
# Assumes the server binary exists (`cargo test` builds it). Creates or updates its own virtual
# environment, .venv-oip, and runs `pytest -q tests/oip`; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
if [ ! -x "$target/debug/proco-serve" ]; then
  echo "tests/oip/run.sh: $target/debug/proco-serve not found: build it first (cargo test)" >&2
  exit 1
fi

if [ ! -x .venv-oip/bin/python ]; then python3 -m venv .venv-oip; fi
.venv-oip/bin/python -m pip install -q --disable-pip-version-check -r tests/oip/requirements.txt
exec .venv-oip/bin/python -m pytest -q -p no:cacheprovider tests/oip "$@"
