#!/usr/bin/env python3
"""Server settings side by side: the release binary started with each --setting in turn,
load-tested in --rounds interleaved rounds (scripts/loadtest.py --start, each level --seconds
after its warm-up) at --clients. Per setting and level: the median over the rounds of req/s, p50
and p99 latency, and the server's CPU time per request (its CPU seconds over the measured window
divided by the requests answered); then each setting's req/s over the first setting's.

  python3 scripts/bench_settings.py OUT_DIR --setting spin-true=--ort-spinning=true \\
      --setting spin-false=--ort-spinning=false
  python3 scripts/bench_settings.py OUT_DIR --setting 1x2=--encoder-instances=1,--intra-threads=2 \\
      --setting 2x1=--encoder-instances=2,--intra-threads=1
  python3 scripts/bench_settings.py --report OUT_DIR      # the tables of a saved run

A setting is LABEL=ARG[,ARG...]; its runs are OUT_DIR/LABEL-ROUND.json. Standard library only.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path


def run(out: Path, binary: str, settings, rounds: int, clients: str, seconds: float):
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, rounds + 1):
        for label, server_args in settings:
            path = out / f"{label}-{r}.json"
            cmd = [sys.executable, "scripts/loadtest.py", "--start", "--binary", binary,
                   "--server-arg=--grpc-listen=off", "--clients", clients, "--seconds", str(seconds),
                   "--json", str(path)] + [f"--server-arg={a}" for a in server_args]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            print(f"round {r}, {label}: done", flush=True)


def report(out: Path):
    rows, order = {}, []
    for path in sorted(out.glob("*-[0-9]*.json")):
        label = re.sub(r"-\d+$", "", path.stem)
        if label not in order:
            order.append(label)
        for lv in json.loads(path.read_text())["levels"]:
            if lv["errors"]:
                sys.exit(f"{path}: {lv['errors']} errors at {lv['clients']} clients")
            cpu_ms = 1e3 * lv["server_cpus_busy"] / lv["req_per_s"]
            rows.setdefault((lv["clients"], label), []).append(
                (lv["req_per_s"], lv["latency_ms"]["p50"], lv["latency_ms"]["p99"], cpu_ms))
    print("| clients | setting | rounds | req/s (median) | p50 ms | p99 ms | server CPU ms / request |")
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for clients in sorted({c for c, _ in rows}):
        for label in order:
            values = rows[(clients, label)]
            med = [statistics.median(v[i] for v in values) for i in range(4)]
            medians[(clients, label)] = med
            print(f"| {clients} | {label} | {len(values)} | {med[0]:.1f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} |")
    print()
    base = order[0]
    for clients in sorted({c for c, _ in rows}):
        for label in order[1:]:
            b, s = medians[(clients, base)], medians[(clients, label)]
            print(f"{clients} clients: {label} / {base} throughput {s[0] / b[0]:.2f}, CPU per request {s[3] / b[3]:.2f}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        return report(Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--setting", action="append", required=True, help="LABEL=ARG[,ARG...]")
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    settings = [(s.split("=", 1)[0], s.split("=", 1)[1].split(",")) for s in args.setting]
    run(Path(args.out), args.binary, settings, args.rounds, args.clients, args.seconds)
    report(Path(args.out))


if __name__ == "__main__":
    main()
