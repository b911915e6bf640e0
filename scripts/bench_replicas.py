#!/usr/bin/env python3
"""How fast a change reaches the other replicas: three proco-serve processes (--binary, default
target/release/proco-serve) sharing their prototypes through a throwaway PostgreSQL cluster
(Debian's postgresql package: initdb on a temporary folder, a free loopback port), each with its
own copy of the bundled model.

--changes times (default 50): teach replica A one image (POST /admin/prototypes/examples), then
poll GET /v1/model on B and C until each serves the version A answered. The delay of a replica is
the time from A's answer to the first poll that sees the new version (polls every --poll-ms, so
each delay is over by at most that much). Writes every delay to --json and prints the
distribution. Standard library only.

Usage: python3 scripts/bench_replicas.py OUT.json [--binary B] [--changes 50] [--poll-ms 2]
       python3 scripts/bench_replicas.py OUT.json --report   (the table of a saved run)
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TOKEN = "bench"
PASSWORD = "bench-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """initdb + pg_ctl, as the postgres user when run as root (initdb refuses root)."""

    def __init__(self, root: Path):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            sys.exit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = bins[-1].parent
        self.root = root
        os.chmod(root, 0o777)
        self.data = root / "data"
        self.port = free_port()
        pw = root / "password"
        pw.write_text(PASSWORD)
        os.chmod(pw, 0o644)
        self.run("initdb", "-D", str(self.data), "-U", "proco", "--pwfile", str(pw),
                 "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(root / "log"), "-o", options,
                 "-w", "start")
        subprocess.run([str(self.bin / "psql"), self.url("postgres"), "-tAc",
                        "CREATE DATABASE proco"], check=True, stdout=subprocess.DEVNULL)

    def run(self, program, *args):
        cmd = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, database="proco"):
        return f"postgres://proco:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self):
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


def start_replica(binary, folder: Path, store: str, log: Path):
    for f in Path("models/cifar10-lt").iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--model-dir", str(folder),
         "--prototype-store", store, "--admin-token", TOKEN, "--prototype-history", "100"],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PROCO_")})
    line = proc.stdout.readline().strip()
    url = "http://" + line.removeprefix("proco-serve listening on ")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    sys.exit(f"replica not ready; see {log}")


def served_version(url):
    with urllib.request.urlopen(url + "/v1/model", timeout=10) as r:
        return json.load(r)["prototypes_version"]


def learn(url, image: bytes, label):
    request = urllib.request.Request(
        f"{url}/admin/prototypes/examples?label={label}&create=true", data=image, method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)["version"]


def measure(args):
    images = sorted(Path("tests/fixtures/parity").glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="proco-replicas-"))
    os.chmod(work, 0o755)  # the postgres user must reach its folder inside
    (work / "pg").mkdir()
    pg = Postgres(work / "pg")
    procs = []
    try:
        urls = []
        for name in "abc":
            (work / name).mkdir()
            proc, url = start_replica(args.binary, work / name, pg.url(), work / f"{name}.log")
            procs.append(proc)
            urls.append(url)
        a, others = urls[0], urls[1:]
        delays = {"b": [], "c": []}
        for i in range(args.changes):
            version = learn(a, images[i % len(images)].read_bytes(), f"bench{i % 5}")
            answered = time.perf_counter()
            pending = dict(zip("bc", others))
            while pending:
                for name, url in list(pending.items()):
                    if served_version(url) == version:
                        delays[name].append(time.perf_counter() - answered)
                        del pending[name]
                if time.perf_counter() - answered > 10:
                    sys.exit(f"change {i}: not followed within 10 s by {sorted(pending)}")
                time.sleep(args.poll_ms / 1000)
            print(f"change {i + 1}/{args.changes}: B {delays['b'][-1] * 1e3:.1f} ms, "
                  f"C {delays['c'][-1] * 1e3:.1f} ms", file=sys.stderr)
        result = {"changes": args.changes, "poll_ms": args.poll_ms, "binary": args.binary,
                  "delays_seconds": delays, "cpu": cpu_model()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        report(result)
    finally:
        for p in procs:
            p.kill()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def report(result):
    print(f"{result['changes']} changes taught to replica A, polls every {result['poll_ms']} ms "
          f"({result['cpu']})\n")
    print("| replica | min (ms) | median (ms) | p90 (ms) | max (ms) | within 1 s |")
    print("|---|---|---|---|---|---|")
    for name, delays in result["delays_seconds"].items():
        ms = sorted(d * 1e3 for d in delays)
        p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
        within = sum(d <= 1.0 for d in delays)
        print(f"| {name.upper()} | {ms[0]:.1f} | {statistics.median(ms):.1f} | {p90:.1f} | "
              f"{ms[-1]:.1f} | {within}/{len(ms)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--binary", default="target/release/proco-serve")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--poll-ms", type=float, default=2)
    p.add_argument("--report", action="store_true", help="print the table of a saved run")
    args = p.parse_args()
    if args.report:
        report(json.loads(Path(args.out).read_text()))
    else:
        measure(args)


if __name__ == "__main__":
    main()
