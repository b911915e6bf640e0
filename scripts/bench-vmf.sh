#!/usr/bin/env bash
# Reruns the vMF math benchmarks behind BENCHMARKS.md and prints them as a Markdown table.
#   scripts/bench-vmf.sh                 # everything (about 3 minutes on 2 cores, after the build)
#   scripts/bench-vmf.sh 'C=1000'        # only benchmarks whose name matches a filter
# Short warm-up and measurement times keep the run short; criterion's raw results stay in
# target/criterion/. Close other CPU-heavy work first: the machine has 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
cargo bench --bench vmf -- --warm-up-time 1 --measurement-time 2 "$@"
python3 scripts/bench_table.py
