#!/usr/bin/env python3
"""Does unloading a model give its memory back? Starts the server on a scratch repository of two
models (the bundled one as the default, and a renamed copy), warms the default model up, then
--cycles times: loads the copy, classifies --requests images with it, unloads it; the resident
memory (VmRSS) of the process is read before the first load, after each load and after each
unload. Prints the table, each cycle's RSS after the unload over its RSS before the load, and the
drift over all cycles (after the last unload over before the first load); exits non-zero if a
cycle's ratio exceeds 1 + --tolerance (default 0.10). Standard library only.

Usage: python3 scripts/repository_rss.py [--binary target/release/proco-serve] [--json OUT]
"""
import argparse
import glob
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "cifar10-lt-proco-resnet32"
COPY = "cifar10-lt-copy"
TOKEN = "rss"
FIXTURES = sorted(glob.glob("tests/fixtures/parity/*.jpg"))


def make_repository(root):
    for folder, name in (("default", MODEL), ("copy", COPY)):
        target = root / folder
        target.mkdir()
        for f in Path("models/cifar10-lt").iterdir():
            if f.is_file():
                shutil.copy(f, target / f.name)
        (target / "model.toml").write_text((target / "model.toml").read_text().replace(MODEL, name))
        doc = json.loads((target / "prototypes.json").read_text())
        doc["model"] = name
        (target / "prototypes.json").write_text(json.dumps(doc))


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid):
    return status(pid, "VmRSS") / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="proco-rss-"))
    make_repository(root)
    proc = subprocess.Popen(
        [args.binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--access-log", "off",
         "--model-dir", str(root / "default"), "--model-repository", str(root),
         "--admin-token", TOKEN, "--reload-poll-ms", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        host, port = line.strip().rsplit(" ", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)

        def call(method, path, body=None, headers=None):
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()

        while call("GET", "/health/ready")[0] != 200:
            time.sleep(0.1)
        images = [open(f, "rb").read() for f in FIXTURES]

        def classify(model, n):
            for i in range(n):
                status, body = call("POST", f"/v1/models/{model}/classify", images[i % len(images)],
                                    {"Content-Type": "image/jpeg"})
                assert status == 200, body

        classify(MODEL, args.requests)
        before = rss_mib(proc.pid)
        threads_before = status(proc.pid, "Threads")
        rows = []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for cycle in range(1, args.cycles + 1):
            assert call("POST", f"/v2/repository/models/{COPY}/load", b"", auth)[0] == 200
            classify(COPY, args.requests)
            loaded = rss_mib(proc.pid)
            assert call("POST", f"/v2/repository/models/{COPY}/unload", b"", auth)[0] == 200
            unloaded = rss_mib(proc.pid)
            rows.append({"cycle": cycle, "loaded_mib": loaded, "unloaded_mib": unloaded,
                         "threads": status(proc.pid, "Threads")})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    print(f"RSS before the first load (default model warm): {before:.1f} MiB, {threads_before} threads")
    print("| cycle | RSS before the load (MiB) | with the copy loaded and used | after unloading it | after / before | threads after |")
    print("|---|---|---|---|---|---|")
    level = before
    for r in rows:
        r["before_mib"] = level
        r["ratio"] = r["unloaded_mib"] / level
        print(f"| {r['cycle']} | {level:.1f} | {r['loaded_mib']:.1f} | {r['unloaded_mib']:.1f} | {r['ratio']:.3f} | {r['threads']} |")
        level = r["unloaded_mib"]
    worst = max(r["ratio"] for r in rows)
    drift = rows[-1]["unloaded_mib"] / before
    print(f"largest after-unload / before-load of one cycle: {worst:.3f} (tolerance {1 + args.tolerance:.2f}); "
          f"after {len(rows)} cycles / before the first: {drift:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"before_mib": before, "threads_before": threads_before, "cycles": rows,
                       "worst_ratio": worst, "drift": drift}, f, indent=1)
    sys.exit(0 if worst <= 1 + args.tolerance else 1)


if __name__ == "__main__":
    main()
