#!/usr/bin/env python3
"""/v1, /v2 (binary BYTES) and gRPC side by side against one server, closed loop.

Starts `target/release/proco-serve` (HTTP and gRPC on ephemeral ports) and, for each client count,
runs the three protocols one after another in the same minute: `/v1/classify` with the JPEG as the
body; `/v2/models/M/infer` with the binary tensor extension (one BYTES image in, `probabilities`
out as binary); `ModelInfer` over gRPC through `tritonclient.grpc` (one BYTES image, raw
contents). Each client is a thread with its own keep-alive connection (gRPC: its own client),
sending the 40 fixture JPEGs in turn. Needs tritonclient (tests/oip/requirements.txt; run it with
.venv-oip/bin/python). Usage: scripts/bench_protocols.py [--clients 1,32] [--seconds 8] [--json OUT]
[--rotate K] (the protocols' order within a level turned by K, so that repeated runs share out the
minutes of a drifting machine). --report RUN.json... [--baseline ORT.json...] prints the medians
of several runs, each protocol over /v1 and over raw ONNX Runtime (scripts/ort_baseline.py: batch 1
at one client, the best batch of the baselines otherwise).
"""
import argparse
import glob
import http.client
import json
import os
import platform
import struct
import subprocess
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

MODEL = "cifar10-lt-proco-resnet32"


def start_server(binary):
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PROCO_")})
    http_addr = proc.stdout.readline().strip().rsplit(" ", 1)[1]
    grpc_addr = proc.stdout.readline().strip().rsplit(" ", 1)[1]
    host, port = http_addr.split(":")
    for _ in range(600):
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", "/health/ready")
            if c.getresponse().status == 200:
                return proc, host, int(port), grpc_addr
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server not ready")


def v2_body(jpeg):
    element = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    return header + element, len(header)


def run(protocol, clients, seconds, host, port, grpc_addr, images):
    v2_bodies = [v2_body(j) for j in images]
    counts = [0] * clients
    errors = [0] * clients
    latencies = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        triton = grpcclient.InferenceServerClient(grpc_addr) if protocol == "grpc" else None
        i = k
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                if protocol == "v1":
                    conn.request("POST", "/v1/classify", body=images[i % len(images)],
                                 headers={"Content-Type": "image/jpeg"})
                    r = conn.getresponse()
                    r.read()
                    ok = r.status == 200
                elif protocol == "v2":
                    body, hl = v2_bodies[i % len(images)]
                    conn.request("POST", f"/v2/models/{MODEL}/infer", body=body,
                                 headers={"Inference-Header-Content-Length": str(hl)})
                    r = conn.getresponse()
                    r.read()
                    ok = r.status == 200
                else:
                    inp = grpcclient.InferInput("image", [1], "BYTES")
                    inp.set_data_from_numpy(np.array([images[i % len(images)]], dtype=np.object_))
                    out = grpcclient.InferRequestedOutput("probabilities")
                    triton.infer(MODEL, [inp], outputs=[out])
                    ok = True
            except Exception:  # noqa: BLE001 - counted, not hidden
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            latencies[k].append(time.perf_counter() - t)
            counts[k] += ok
            errors[k] += not ok
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    [t.start() for t in threads]
    stop_at[0] = time.perf_counter() + 1.0 + seconds  # 1 s warm-up counted out below
    start.wait()
    time.sleep(1.0)
    base = sum(counts)
    t0 = time.perf_counter()
    [t.join() for t in threads]
    elapsed = time.perf_counter() - t0
    lat = sorted(x for per in latencies for x in per)
    return {"protocol": protocol, "clients": clients, "req_per_s": (sum(counts) - base) / elapsed,
            "errors": sum(errors), "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1e3 * lat[int(len(lat) * 0.99)] if lat else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--clients", default="1,32")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json")
    ap.add_argument("--rotate", type=int, default=0)
    ap.add_argument("--report", nargs="+", metavar="RUN_JSON")
    ap.add_argument("--baseline", nargs="*", default=[], metavar="ORT_JSON")
    args = ap.parse_args()
    if args.report:
        return report(args.report, args.baseline)
    order = ["v1", "v2", "grpc"]
    order = order[args.rotate % 3:] + order[:args.rotate % 3]
    images = [open(f, "rb").read() for f in sorted(glob.glob("tests/fixtures/parity/*.jpg"))]
    proc, host, port, grpc_addr = start_server(args.binary)
    rows = []
    try:
        for clients in [int(c) for c in args.clients.split(",")]:
            for protocol in order:
                r = run(protocol, clients, args.seconds, host, port, grpc_addr, images)
                rows.append(r)
                print(f"{protocol:<5} clients {clients:>3}: {r['req_per_s']:8.1f} req/s, "
                      f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\n| clients | /v1 req/s | /v2 binary req/s | /v2 / /v1 | gRPC req/s | gRPC / /v1 |")
    print("|---|---|---|---|---|---|")
    for clients in sorted({r["clients"] for r in rows}):
        by = {r["protocol"]: r for r in rows if r["clients"] == clients}
        v1 = by["v1"]["req_per_s"]
        print(f"| {clients} | {v1:.1f} | {by['v2']['req_per_s']:.1f} | {by['v2']['req_per_s'] / v1:.2f} | "
              f"{by['grpc']['req_per_s']:.1f} | {by['grpc']['req_per_s'] / v1:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       "rows": rows}, f, indent=1)


def report(runs, baselines):
    import statistics
    rows = [r for path in runs for r in json.load(open(path))["rows"]]
    raw = {}
    for path in baselines:
        for r in json.load(open(path))["results"]:
            raw.setdefault(r["batch_size"], []).append(r["images_per_s"])
    raw = {b: statistics.median(v) for b, v in raw.items()}
    print(f"{len(runs)} runs; medians\n")
    print("| clients | protocol | req/s (median) | runs | p50 ms | p99 ms | / /v1 | / raw ONNX Runtime |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in sorted({r["clients"] for r in rows}):
        ceiling = raw.get(1) if clients == 1 else max((v for b, v in raw.items() if b > 1), default=None)
        med = {}
        for protocol in ("v1", "v2", "grpc"):
            mine = [r for r in rows if r["clients"] == clients and r["protocol"] == protocol]
            med[protocol] = statistics.median(r["req_per_s"] for r in mine)
            name = {"v1": "/v1", "v2": "/v2 binary", "grpc": "gRPC"}[protocol]
            print(f"| {clients} | {name} | {med[protocol]:.1f} | "
                  f"{', '.join(format(r['req_per_s'], '.0f') for r in mine)} | "
                  f"{statistics.median(r['p50_ms'] for r in mine):.2f} | "
                  f"{statistics.median(r['p99_ms'] for r in mine):.2f} | {med[protocol] / med['v1']:.2f} | "
                  + (f"{med[protocol] / ceiling:.2f} |" if ceiling else "- |"))
    if raw:
        print("\nraw ONNX Runtime images/s (median of the baselines): "
              + ", ".join(f"batch {b} {v:.0f}" for b, v in sorted(raw.items())))


if __name__ == "__main__":
    main()
