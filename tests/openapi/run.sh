#!/usr/bin/env bash
# The OpenAPI document against the real server: /openapi.json must be a valid OpenAPI document
# (openapi-spec-validator), and schemathesis, generating requests for every operation from it
# (admin routes included, with the token, on a scratch copy of the bundled model), must find no
# 5xx and no answer that the document does not describe (status, content type, body schema,
# headers). Pinned in tests/openapi/requirements.txt, installed into .venv-oip.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
binary="$target/debug/proco-serve"
[ -x "$binary" ] || { echo "tests/openapi/run.sh: $binary not found: build it first (cargo test)" >&2; exit 1; }

if [ ! -x .venv-oip/bin/python ]; then python3 -m venv .venv-oip; fi
.venv-oip/bin/python -m pip install -q --disable-pip-version-check -r tests/openapi/requirements.txt

scratch=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$scratch"' EXIT
cp -r models/cifar10-lt "$scratch/model"
rm -rf "$scratch/model/logs" "$scratch"/model/*.versions
# Created here, not by the background job's redirect: the loop below may read it before that job
# has run, and sed on a missing file would end the script under set -e.
: > "$scratch/stdout"
env -u PROCO_CONFIG PROCO_ADMIN_TOKEN=openapi-test "$binary" --listen 127.0.0.1:0 --grpc-listen off \
  --model-dir "$scratch/model" --log-level warn > "$scratch/stdout" 2> "$scratch/server.log" &
pid=$!
for _ in $(seq 1 600); do
  addr=$(sed -n 's/^proco-serve listening on //p' "$scratch/stdout" | head -1)
  if [ -n "$addr" ] && curl -fs "http://$addr/health/ready" > /dev/null 2>&1; then break; fi
  sleep 0.2
done
[ -n "${addr:-}" ] || { echo "the server did not start:" >&2; cat "$scratch/server.log" >&2; exit 1; }

curl -fs "http://$addr/openapi.json" > "$scratch/openapi.json"
.venv-oip/bin/openapi-spec-validator "$scratch/openapi.json"
.venv-oip/bin/schemathesis run "http://$addr/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  -H "Authorization: Bearer openapi-test" --max-examples 30 --request-timeout 20 --seed 1
if grep -qi "panicked" "$scratch/server.log"; then
  echo "the server panicked during the run:" >&2; cat "$scratch/server.log" >&2; exit 1
fi
