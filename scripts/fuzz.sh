#!/usr/bin/env bash
# Fuzzes the parsers that see untrusted bytes (fuzz/, cargo-fuzz with AddressSanitizer), one
# target at a time, then minimises each corpus into fuzz/corpus/<target>/ (inputs of at most
# 8 KiB kept, fuzz/trim_corpus.py) and writes the
# figures of the logs (fuzz/logs/<target>.log) to fuzz/RESULTS.md.
#
#   scripts/fuzz.sh [SECONDS_EACH]        (default 600; TARGETS="query image" to pick)
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. Builds
# take /tmp/cargo-build.lock (machines shared by several builders); runs are niced.
# A crash does not stop a run (-fork=1 -ignore_crashes=1): every crash, out-of-memory and
# timeout input lands in fuzz/artifacts/<target>/; minimise one with
#   cargo fuzz tmin <target> <input>
# fix the bug, and commit the input under fuzz/regressions/<target>/ (tests/fuzz_corpus.rs
# replays those with plain `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
TARGETS=${TARGETS:-"query prototypes oip_request multipart image"}
export RUSTC_BOOTSTRAP=1
# The fuzz targets never run the encoder: no need to fetch ONNX Runtime.
export PROCO_SKIP_ORT_DOWNLOAD=1

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
python3 fuzz/make_seeds.py
# FUZZ_NO_BUILD=1: run what fuzz/target already holds (a build waits for the shared lock).
[ "${FUZZ_NO_BUILD:-0}" = 1 ] || flock /tmp/cargo-build.lock cargo fuzz build

# Per target: the largest input tried, the largest single allocation allowed and the RSS cap.
# Allocations are tied to the configured limits (config/default.toml): an image may make the
# decoder allocate up to max_alloc = 8 bytes x max_pixels (40,000,000) = 320 MB, so 320 MiB;
# the others read a request body of at most max_body_bytes (8 MiB), so 8 MiB; a prototypes
# file has no size limit of its own, so 64 MiB (1000 times the largest input tried).
limits() {
    case $1 in
        image) echo "-max_len=65536 -malloc_limit_mb=320 -rss_limit_mb=2048 -timeout=20" ;;
        prototypes) echo "-max_len=65536 -malloc_limit_mb=64 -rss_limit_mb=1024 -timeout=10" ;;
        query) echo "-max_len=4096 -malloc_limit_mb=8 -rss_limit_mb=1024 -timeout=10" ;;
        *) echo "-max_len=65536 -malloc_limit_mb=8 -rss_limit_mb=1024 -timeout=10" ;;
    esac
}

mkdir -p fuzz/logs
for t in $TARGETS; do
    work=fuzz/corpus-work/$t
    rm -rf "$work"
    mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    cp fuzz/seeds/"$t"/* "$work"/
    cp fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
    bin=fuzz/target/x86_64-unknown-linux-gnu/release/$t
    echo "$(limits "$t") -max_total_time=$SECONDS_EACH" >"fuzz/logs/$t.cmd"
    # shellcheck disable=SC2046
    nice -n 19 "$bin" "$work" $(limits "$t") -max_total_time="$SECONDS_EACH" \
        -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
        >"fuzz/logs/$t.log" 2>&1 || echo "$t: the fuzzer exited with $?"
    # Minimise: keep the smallest set of inputs with the same coverage (what cargo fuzz cmin runs).
    rm -rf "fuzz/corpus/$t.new"
    mkdir -p "fuzz/corpus/$t.new"
    # shellcheck disable=SC2046
    nice -n 19 "$bin" -merge=1 $(limits "$t") "fuzz/corpus/$t.new" "$work" \
        >"fuzz/logs/$t.cmin.log" 2>&1
    rm -rf "fuzz/corpus/$t"
    mv "fuzz/corpus/$t.new" "fuzz/corpus/$t"
    # Only inputs of at most 8 KiB are committed (the large real files are seeds already).
    python3 fuzz/trim_corpus.py "$t" 8192
done
python3 fuzz/results.py >fuzz/RESULTS.md
cat fuzz/RESULTS.md
