#!/usr/bin/env python3
"""proco-serve against its ceiling and its Python peer, interleaved, on /v1/classify:

* raw ONNX Runtime: scripts/ort_baseline.py on pre-decoded fixtures (images/s at batch 1, 16, 32);
* proco-serve: the release binary with its defaults (scripts/loadtest.py --start);
* the Python peer: FastAPI on uvicorn (2 workers, uvloop, httptools), one ONNX Runtime session of
  one thread per worker (scripts/python_peer/app.py, its own virtual environment .venv-peer).

--variant LABEL=ARG[,ARG...] (repeatable) runs proco-serve once per variant with those flags
(default: one variant, "default", with none). Each of --rounds rounds runs them all one after the
other; the load tests measure --clients
(default 1,32) for --seconds each, with the server's CPU time (the peer's: all its processes)
over each measured window. Writes OUT_DIR/{ort,proco-LABEL,peer}-ROUND.json and prints the medians:
req/s, p50/p99, CPU ms per request, proco-serve over raw ONNX Runtime (batch 1 at one client, the
best batch at the highest client count) and over the peer.

  python3 -m venv .venv-peer && .venv-peer/bin/pip install -r scripts/python_peer/requirements.txt
  python3 scripts/bench_peer.py OUT_DIR [--rounds 3] [--clients 1,32] [--seconds 8] \
      [--variant intra1=--intra-threads=1 ...]
  python3 scripts/bench_peer.py OUT_DIR --report
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_peer(port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCO_")}
    env.update(PEER_MODEL_DIR="models/cifar10-lt", PEER_INTRA_THREADS="1")
    proc = subprocess.Popen(
        [".venv-peer/bin/uvicorn", "--app-dir", "scripts/python_peer", "app:app", "--workers", "2",
         "--loop", "uvloop", "--http", "httptools", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the Python peer did not start (is .venv-peer installed?)")


def run(out: Path, rounds: int, clients: str, seconds: float, variants):
    out.mkdir(parents=True, exist_ok=True)
    for r in range(1, rounds + 1):
        subprocess.run([".venv/bin/python", "scripts/ort_baseline.py", "--batch-sizes", "1,16,32",
                        "--seconds", "3", "--json", str(out / f"ort-{r}.json")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"round {r}: raw ONNX Runtime done", flush=True)
        for label, flags in variants:
            subprocess.run([sys.executable, "scripts/loadtest.py", "--start", "--server-arg=--grpc-listen=off",
                            "--server-arg=--access-log=off", "--clients", clients, "--seconds", str(seconds),
                            "--json", str(out / f"proco-{label}-{r}.json")]
                           + [f"--server-arg={f}" for f in flags],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"round {r}: proco-serve {label} done", flush=True)
        port = free_port()
        peer = start_peer(port)
        try:
            subprocess.run([sys.executable, "scripts/loadtest.py", "--url", f"http://127.0.0.1:{port}",
                            "--server-pid", str(peer.pid), "--clients", clients, "--seconds", str(seconds),
                            "--json", str(out / f"peer-{r}.json")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.killpg(peer.pid, 15)
            peer.wait(timeout=30)
        print(f"round {r}: the Python peer done", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def report(out: Path):
    rounds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in out.glob("ort-*.json"))
    labels = sorted({p.stem.split("-", 1)[1].rsplit("-", 1)[0] for p in out.glob("proco-*.json")},
                    key=lambda l: (l != "default", l))
    servers = [(f"proco-{l}", f"proco-serve ({l})") for l in labels] + [("peer", "Python peer")]
    load = {k: [json.loads((out / f"{k}-{r}.json").read_text()) for r in rounds] for k, _ in servers}
    ort = [json.loads((out / f"ort-{r}.json").read_text()) for r in rounds]

    def ort_rate(run, batch):
        for row in run["results"]:
            if row["batch_size"] == batch:
                return row["images_per_s"]
        return None

    first = load[servers[0][0]][0]
    levels = [L["clients"] for L in first["levels"]]
    print(f"{len(rounds)} interleaved rounds; {first['meta'].get('machine', '')}\n")
    print("| clients | server | req/s (median) | rounds | p50 ms | p99 ms | server CPU ms / request |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for i, c in enumerate(levels):
        for k, name in servers:
            rows = [run["levels"][i] for run in load[k]]
            rps = [L["req_per_s"] for L in rows]
            cpu = [L["server_cpus_busy"] / L["req_per_s"] * 1e3 if L.get("server_cpus_busy") else None
                   for L in rows]
            med[(k, c)] = (median(rps), median(cpu))
            print(f"| {c} | {name} | {median(rps):.1f} | {', '.join(f'{x:.0f}' for x in rps)} | "
                  f"{median([L['latency_ms']['p50'] for L in rows]):.2f} | "
                  f"{median([L['latency_ms']['p99'] for L in rows]):.2f} | {median(cpu):.2f} |")
    raw = {b: median([ort_rate(run, b) for run in ort]) for b in (1, 16, 32)}
    print(f"\nraw ONNX Runtime (images/s, median of {len(rounds)}): batch 1 {raw[1]:.0f}, "
          f"batch 16 {raw[16]:.0f}, batch 32 {raw[32]:.0f}\n")
    best = max(raw[16], raw[32])
    for c in levels:
        ceiling = raw[1] if c == 1 else best
        q_rps, q_cpu = med[("peer", c)]
        for k, name in servers[:-1]:
            p_rps, p_cpu = med[(k, c)]
            print(f"{c} clients, {name}: / raw ONNX Runtime ({'batch 1' if c == 1 else 'best batch'}) "
                  f"{p_rps / ceiling:.2f}; / peer: throughput {p_rps / q_rps:.2f}, CPU per request "
                  f"{p_cpu / q_cpu:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", default="1,32")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--variant", action="append", default=[], help="LABEL=ARG[,ARG...]: proco-serve flags")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    variants = [(v.split("=", 1)[0], [a for a in v.split("=", 1)[1].split(",") if a])
                for v in args.variant] or [("default", [])]
    if not args.report:
        run(Path(args.out), args.rounds, args.clients, args.seconds, variants)
    report(Path(args.out))


if __name__ == "__main__":
    main()
