#!/usr/bin/env bash
# The server under load with the fp32 and the INT8 encoder, interleaved (issue 16):
#   scripts/bench-int8-server.sh OUT_DIR [BINARY] [ROUNDS]
# Each round load-tests `--encoder-variant fp32` and `--encoder-variant int8` (the order
# alternates between rounds) at 1 and 32 clients, 8 s per level after 1 s warm-up; writes
# OUT_DIR/loadtest-ROUND-VARIANT.{json,txt}. scripts/int8_report.py builds the table.
# gRPC is off (its fixed port may be taken by another server on the machine; /v1 is measured).
# Run from the repository root with nothing else busy.
set -euo pipefail
out=${1:?usage: scripts/bench-int8-server.sh OUT_DIR [BINARY] [ROUNDS]}
binary=${2:-target/release/proco-serve}
rounds=${3:-2}
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  order="fp32 int8"; [ $((r % 2)) -eq 0 ] && order="int8 fp32"
  for v in $order; do
    python3 scripts/loadtest.py --start --binary "$binary" --server-arg=--encoder-variant --server-arg="$v" --server-arg=--grpc-listen --server-arg=off \
      --clients 1,32 --seconds 8 --json "$out/loadtest-$r-$v.json" > "$out/loadtest-$r-$v.txt"
    tail -n 12 "$out/loadtest-$r-$v.txt"
  done
done
