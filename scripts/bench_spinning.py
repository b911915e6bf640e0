#!/usr/bin/env python3
"""ONNX Runtime's spinning threads: the server with `ort_spinning` on and off, load-tested in
--rounds interleaved rounds (scripts/loadtest.py --start, each level --seconds after its warm-up),
at --clients. Per level and setting: the median over the rounds of req/s, p50 and p99 latency,
and the server's CPU time per request (its CPU seconds over the measured window / requests).

Usage: python3 scripts/bench_spinning.py OUT_DIR [--binary B] [--rounds 3] [--clients 1,8,32]
       python3 scripts/bench_spinning.py --report OUT_DIR
Standard library only.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = ["true", "false"]


def run(out: Path, binary: str, rounds: int, clients: str, seconds: float):
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, rounds + 1):
        for spin in SETTINGS:
            path = out / f"spin-{spin}-{r}.json"
            subprocess.run([sys.executable, "scripts/loadtest.py", "--start", "--binary", binary,
                            f"--server-arg=--ort-spinning={spin}", "--server-arg=--grpc-listen=off",
                            "--clients", clients, "--seconds", str(seconds), "--json", str(path)],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"round {r}, ort_spinning={spin}: done", flush=True)


def report(out: Path):
    rows = {}
    for path in sorted(out.glob("spin-*-*.json")):
        spin = path.name.split("-")[1]
        for lv in json.loads(path.read_text())["levels"]:
            if lv["errors"]:
                sys.exit(f"{path}: {lv['errors']} errors at {lv['clients']} clients")
            cpu_ms = 1e3 * lv["server_cpus_busy"] / lv["req_per_s"]
            rows.setdefault((lv["clients"], spin), []).append(
                (lv["req_per_s"], lv["latency_ms"]["p50"], lv["latency_ms"]["p99"], cpu_ms))
    print("| clients | ort_spinning | rounds | req/s (median) | p50 ms | p99 ms | server CPU ms / request |")
    print("|---|---|---|---|---|---|---|")
    for (clients, spin), values in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != "true")):
        med = [statistics.median(v[i] for v in values) for i in range(4)]
        print(f"| {clients} | {spin} | {len(values)} | {med[0]:.1f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} |")
    print()
    for clients in sorted({c for c, _ in rows}):
        on = [v[0] for v in rows[(clients, "true")]]
        off = [v[0] for v in rows[(clients, "false")]]
        cpu_on = [v[3] for v in rows[(clients, "true")]]
        cpu_off = [v[3] for v in rows[(clients, "false")]]
        print(f"{clients} clients: off / on throughput {statistics.median(off) / statistics.median(on):.2f}, "
              f"CPU per request {statistics.median(cpu_off) / statistics.median(cpu_on):.2f}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return report(Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    run(Path(args.out), args.binary, args.rounds, args.clients, args.seconds)
    report(Path(args.out))


if __name__ == "__main__":
    main()
