#!/usr/bin/env python3
"""What a second model costs: one server (--binary, default target/release/proco-serve) on a
scratch repository of two models (the bundled one as the default, and a renamed copy), measured
in --rounds interleaved rounds with scripts/loadtest.py:

* alone: the copy unloaded, --clients clients on the default model;
* two models: the copy loaded, half the clients on each model at once (the same total load);
* lookup: one client on /v1/classify and one on /v1/models/{default}/classify, one after the
  other (the named route looks the model up in the repository; the other takes the default).

Prints one table per measure with each round and the median ratio, and writes --json.
Standard library only.
--report OUT_DIR/summary.json prints the tables of a saved run.
Usage: python3 scripts/bench_repository.py OUT_DIR [--binary B] [--rounds 3] [--clients 16]
       [--server-arg=--intra-threads=1 ...]
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MODEL = "cifar10-lt-proco-resnet32"
COPY = "cifar10-lt-copy"
TOKEN = "bench"


def make_repository(root: Path):
    target = root / "copy"
    target.mkdir()
    for f in Path("models/cifar10-lt").iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
    manifest = (target / "model.toml").read_text()
    (target / "model.toml").write_text(manifest.replace(f'name = "{MODEL}"', f'name = "{COPY}"', 1))
    doc = json.loads((target / "prototypes.json").read_text())
    doc["model"] = COPY
    (target / "prototypes.json").write_text(json.dumps(doc))


def post(url, path):
    request = urllib.request.Request(url + path, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return r.status


def loadtest(url, out, clients, seconds, model=""):
    cmd = [sys.executable, "scripts/loadtest.py", "--url", url, "--clients", str(clients),
           "--seconds", str(seconds), "--json", str(out)]
    if model:
        cmd += ["--model", model]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def req_per_s(path):
    levels = json.loads(Path(path).read_text())["levels"]
    assert all(lv.get("errors", 0) == 0 for lv in levels), f"{path}: errors"
    return levels[0]["req_per_s"]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        summary = json.loads(Path(sys.argv[2]).read_text())
        return report(summary["rounds"], summary["clients"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="an extra argument for the server, e.g. --server-arg=--intra-threads=1")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="proco-bench-repo-"))
    make_repository(root)
    server = subprocess.Popen(
        [args.binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--access-log", "off",
         "--model-repository", str(root), "--admin-token", TOKEN, "--reload-poll-ms", "0",
         *args.server_arg],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows = []
    try:
        url = "http://" + server.stdout.readline().strip().rsplit(" ", 1)[1]
        while True:
            try:
                if urllib.request.urlopen(url + "/health/ready", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        half = args.clients // 2
        for r in range(1, args.rounds + 1):
            row = {"round": r}
            p = loadtest(url, out / f"alone-{r}.json", args.clients, args.seconds)
            p.wait()
            row["alone"] = req_per_s(out / f"alone-{r}.json")
            assert post(url, f"/v2/repository/models/{COPY}/load") == 200
            a = loadtest(url, out / f"two-{r}-default.json", half, args.seconds)
            b = loadtest(url, out / f"two-{r}-copy.json", half, args.seconds, COPY)
            a.wait(), b.wait()
            row["two_default"] = req_per_s(out / f"two-{r}-default.json")
            row["two_copy"] = req_per_s(out / f"two-{r}-copy.json")
            assert post(url, f"/v2/repository/models/{COPY}/unload") == 200
            for name, model in (("default_route", ""), ("named_route", MODEL)):
                p = loadtest(url, out / f"{name}-{r}.json", 1, args.seconds, model)
                p.wait()
                row[name] = req_per_s(out / f"{name}-{r}.json")
            rows.append(row)
            print(f"round {r}: {row}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps({"clients": args.clients, "rounds": rows}, indent=1))
    report(rows, args.clients)


def report(rows, clients):
    half = clients // 2
    print(f"\n| round | one model, {clients} clients (req/s) | two models, {half} + {half} clients (req/s, sum) | two / one |")
    print("|---|---|---|---|")
    for row in rows:
        two = row["two_default"] + row["two_copy"]
        print(f"| {row['round']} | {row['alone']:.1f} | {row['two_default']:.1f} + {row['two_copy']:.1f} = {two:.1f} | {two / row['alone']:.2f} |")
    print(f"\nmedian two / one: {statistics.median((r['two_default'] + r['two_copy']) / r['alone'] for r in rows):.2f}")
    print("\n| round | /v1/classify, 1 client (req/s) | /v1/models/{name}/classify, 1 client | named / default |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['round']} | {row['default_route']:.1f} | {row['named_route']:.1f} | {row['named_route'] / row['default_route']:.3f} |")
    print(f"\nmedian named / default: {statistics.median(r['named_route'] / r['default_route'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
