#!/usr/bin/env bash
# The console page (GET /, src/http/page.html) in headless Chromium against the real server:
# submit a fixture image through the page and compare what it renders with POST /v1/classify,
# the monitoring panel's refresh, feedback through the page, an error in words, and no request
# to any host but the server. Needs python3 and a built ${CARGO_TARGET_DIR:-target}/debug/proco-serve
# (cargo test builds it); installs Debian's chromium and chromium-driver when missing, and the
# pinned Python packages of tests/page/requirements.txt into tests/page/.venv. Binds only 127.0.0.1.
#
#   bash tests/page/run.sh                 # the screenshot goes to tests/page/out/page.png
#   bash tests/page/run.sh --screenshot    # ... and to docs/page.png (the one the README shows)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--screenshot" ]; then export PAGE_SCREENSHOT="$PWD/docs/page.png"; shift; fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || { echo "tests/page/run.sh: cannot install chromium (apt-get install chromium chromium-driver)" >&2; exit 1; }
  else
    echo "tests/page/run.sh: chromium or chromedriver missing and no apt-get" >&2; exit 1
  fi
fi

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
export PROCO_SERVE_BIN="$target/debug/proco-serve"
[ -x "$PROCO_SERVE_BIN" ] || { echo "tests/page/run.sh: $PROCO_SERVE_BIN not found: build it first (cargo test)" >&2; exit 1; }

if [ ! -x tests/page/.venv/bin/python ]; then python3 -m venv tests/page/.venv; fi
tests/page/.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/page/requirements.txt

# The browser and its driver talk over loopback: never through a proxy from the environment.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost,::1${no_proxy:+,$no_proxy}"
export SE_AVOID_STATS=true   # selenium: no usage statistics (there is no network here anyway)
if timeout 300 tests/page/.venv/bin/python -m pytest -v -p no:cacheprovider tests/page "$@"; then
  echo "tests/page: PASS"
else
  rc=$?
  echo "tests/page: FAIL (exit $rc; the server's log and chromedriver's are in tests/page/out/)" >&2
  exit "$rc"
fi
