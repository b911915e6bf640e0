#!/usr/bin/env bash
# The deploy checks (deploy/): manifests validated for a named Kubernetes version and against
# the server, alert rules (promtool check + test), the dashboard's queries, a real Prometheus
# scraping a running server, and the ConfigMap ..data symlink-swap hot reload.
# Needs python3 and a built target/debug/proco-serve (cargo test builds it); installs
# Prometheus (Debian package) when missing and apt-get is there. Binds only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null || [ ! -x /usr/bin/prometheus ]; then
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1 \
      || { echo "cannot install prometheus (apt-get install prometheus)" >&2; exit 1; }
  else
    echo "prometheus/promtool missing and no apt-get: install Prometheus" >&2; exit 1
  fi
fi

if [ ! -x .venv-deploy/bin/python ]; then python3 -m venv .venv-deploy; fi
.venv-deploy/bin/python -m pip install -q --disable-pip-version-check -r tests/deploy/requirements.txt

export K8S_VERSION="${K8S_VERSION:-1.32}"
timeout 300 .venv-deploy/bin/python -m pytest -q -p no:cacheprovider tests/deploy "$@"
