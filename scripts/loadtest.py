#!/usr/bin/env python3
"""Closed-loop load test of proco-serve's POST /v1/classify (Python 3 standard library only).

Each client is a thread with its own keep-alive HTTP/1.1 connection that sends one fixture JPEG
(`tests/fixtures/parity/*.jpg`, as an `image/jpeg` body), waits for the answer and sends the
next one at once. For every concurrency in --clients the clients first run a short warm-up
(--warmup seconds, not counted), meet at a barrier, and then run for --seconds or until
--max-requests requests in all have been sent, whichever comes first.

Per level it reports: requests answered 200, errors (any non-200 status, or a timeout or
connection error: counted and listed by kind), req/s (200s per second of the measured window),
client-side latency p50/p90/p99 (successful requests), and from the server's own answers:
mean `batch_size`, mean encoder time per image (`timings_ms.inference / batch_size`), mean
vMF posterior time (`timings_ms.posterior`, per batch and per image).

The server is either one already running (--url, loopback only) or started here (--start:
`target/release/proco-serve --listen 127.0.0.1:0`, killed by its PID at the end).

With --baseline ort.json (from scripts/ort_baseline.py) the report also gives req/s as a ratio
of raw ONNX Runtime images/s at batch 1, and the posterior time as a fraction of the encoder
time per image. --report lt.json prints the report of a saved run without sending anything.

Note: the client runs on the same machine as the server and competes with it for the CPUs.
"""

import argparse
import glob
import http.client
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

DEFAULT_FIXTURES = "tests/fixtures/parity/*.jpg"
DEFAULT_BINARY = "target/release/proco-serve"
LISTEN_PREFIX = "proco-serve listening on "


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Addresses: loopback only.


def require_loopback(host):
    """Returns host if it is a loopback address (or a name resolving only to loopback)."""
    h = host.strip("[]")
    try:
        if ipaddress.ip_address(h).is_loopback:
            return h
        raise SystemExit(f"loadtest: refusing non-loopback address {host!r}")
    except ValueError:
        pass
    if h != "localhost":
        raise SystemExit(f"loadtest: refusing host {host!r}: only loopback addresses are allowed")
    addrs = {ai[4][0] for ai in socket.getaddrinfo(h, None)}
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(f"loadtest: 'localhost' resolves to {sorted(addrs)}, not only loopback")
    return h


def parse_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise SystemExit(f"loadtest: only http:// URLs are supported, got {url!r}")
    if not u.hostname or not u.port:
        raise SystemExit(f"loadtest: the URL needs a host and a port: {url!r}")
    if u.path not in ("", "/") or u.query or u.username or u.password:
        raise SystemExit(f"loadtest: give only http://HOST:PORT, got {url!r}")
    return require_loopback(u.hostname), u.port


def parse_listen(addr):
    """'127.0.0.1:PORT' or '[::1]:PORT' -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return require_loopback(host), int(port)


# ---------------------------------------------------------------------------------------------
# Starting and stopping a server.


class Server:
    def __init__(self, binary, extra_args, log_path, ready_timeout):
        binary = os.path.abspath(binary)
        if not os.path.isfile(binary):
            raise SystemExit(f"loadtest: {binary} does not exist (cargo build --release)")
        self.cmd = [binary, "--listen", "127.0.0.1:0"] + list(extra_args)
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        log(f"starting: {' '.join(self.cmd)} (stderr -> {log_path})")
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=self.log_file, stdin=subprocess.DEVNULL
        )
        self.pid = self.proc.pid
        self.stdout_lines = []
        found = threading.Event()
        self.addr = None

        def read_stdout():
            for raw in self.proc.stdout:  # keeps draining until the process ends
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                if self.addr is None and line.startswith(LISTEN_PREFIX):
                    self.addr = line[len(LISTEN_PREFIX):].strip()
                    found.set()
            found.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not found.wait(ready_timeout) or self.addr is None:
            self.stop()
            raise SystemExit(
                f"loadtest: the server printed no '{LISTEN_PREFIX}ADDR' line "
                f"(exit code {self.proc.poll()}; see {log_path})"
            )
        self.host, self.port = parse_listen(self.addr)
        log(f"server pid {self.pid} listening on {self.addr}")
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"loadtest: the server exited with {self.proc.returncode}; see {log_path}"
                )
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=5)
                c.request("GET", "/health/ready")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"loadtest: /health/ready not 200 after {ready_timeout} s")
            time.sleep(0.1)
        log("server ready (/health/ready = 200)")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                log(f"server pid {self.pid} did not stop on SIGTERM; SIGKILL")
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()
        log(f"server pid {self.pid} stopped (exit code {self.proc.returncode})")


# ---------------------------------------------------------------------------------------------
# The load.


class Level:
    """Shared state of one concurrency level."""

    def __init__(self, clients, seconds, max_requests, warmup, server_pid):
        self.server_pid = server_pid
        self.clients = clients
        self.seconds = seconds
        self.max_requests = max_requests
        self.warmup = warmup
        self.lock = threading.Lock()
        self.sent = 0  # measured requests started
        self.t0 = None
        self.barrier = threading.Barrier(clients, action=self._start)
        self.records = []  # per worker: list of measured results
        self.warm_errors = {}

    def _start(self):
        self.cpu0 = cpu_seconds(self.server_pid)
        self.t0 = time.perf_counter()

    def claim(self):
        with self.lock:
            if self.sent >= self.max_requests:
                return False
            self.sent += 1
            return True


def machine_busy_seconds():
    """CPU seconds all CPUs spent not idle (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_seconds(server_pid):
    """(this process's CPU seconds, the started server's or None, the whole machine's or None)."""
    t = os.times()
    mine = t.user + t.system
    machine_s = machine_busy_seconds()
    theirs = tree_cpu_seconds(server_pid) if server_pid is not None else None
    return mine, theirs, machine_s


def tree_cpu_seconds(pid):
    """CPU seconds of a process and all its live descendants (a server with worker processes),
    or None when the process is gone."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, ValueError, IndexError):
                pass
    if pid not in stats:
        return None
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(stats[p][1] for p in tree) / os.sysconf("SC_CLK_TCK")


def one_request(conn_box, host, port, timeout, path, body):
    """Sends one request; returns (status or error kind, latency s, parsed JSON or detail)."""
    if conn_box[0] is None:
        conn_box[0] = http.client.HTTPConnection(host, port, timeout=timeout)
    conn = conn_box[0]
    t = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        data = resp.read()
        lat = time.perf_counter() - t
        if resp.will_close:
            conn.close()
            conn_box[0] = None
    except (OSError, http.client.HTTPException) as e:
        lat = time.perf_counter() - t
        conn.close()
        conn_box[0] = None
        kind = "timeout" if isinstance(e, socket.timeout) else type(e).__name__
        return kind, lat, str(e)
    if resp.status != 200:
        return resp.status, lat, data[:200].decode("utf-8", "replace")
    try:
        return 200, lat, json.loads(data)
    except ValueError as e:
        return "bad-json", lat, str(e)


def worker(level, idx, host, port, timeout, path, images, warm_end, out):
    conn_box = [None]
    i = idx  # each client starts at a different image
    while time.perf_counter() < warm_end:
        status, _, detail = one_request(conn_box, host, port, timeout, path, images[i % len(images)])
        i += 1
        if status != 200:
            with level.lock:
                key = str(status)
                level.warm_errors[key] = level.warm_errors.get(key, 0) + 1
    level.barrier.wait()
    end = level.t0 + level.seconds
    while time.perf_counter() < end and level.claim():
        status, lat, detail = one_request(conn_box, host, port, timeout, path, images[i % len(images)])
        i += 1
        out.append((status, lat, detail, time.perf_counter()))
    if conn_box[0] is not None:
        conn_box[0].close()


def run_level(clients, args, host, port, images, server_pid):
    level = Level(clients, args.seconds, args.max_requests, args.warmup, server_pid)
    base = f"/v1/models/{args.model}/classify" if args.model else "/v1/classify"
    path = base + (("?" + args.query) if args.query else "")
    outs = [[] for _ in range(clients)]
    warm_end = time.perf_counter() + args.warmup
    threads = [
        threading.Thread(
            target=worker,
            args=(level, k, host, port, args.timeout, path, images, warm_end, outs[k]),
            daemon=True,
        )
        for k in range(clients)
    ]
    log(f"[clients={clients}] warm-up {args.warmup:g} s, then {args.seconds:g} s "
        f"(at most {args.max_requests} requests)")
    for t in threads:
        t.start()
    last = time.perf_counter()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
        now = time.perf_counter()
        if level.t0 is not None and now - last >= 2.0:
            done = sum(len(o) for o in outs)
            log(f"[clients={clients}]   {now - level.t0:5.1f} s: {done} answers")
            last = now
    for t in threads:
        t.join()
    cpu1 = cpu_seconds(server_pid)
    records = [r for o in outs for r in o]
    t_end = max((r[3] for r in records), default=level.t0)
    L = summarize(clients, records, t_end - level.t0, level.warm_errors, args)
    wall = time.perf_counter() - level.t0
    L["client_cpus_busy"] = (cpu1[0] - level.cpu0[0]) / wall
    L["server_cpus_busy"] = (cpu1[1] - level.cpu0[1]) / wall if cpu1[1] is not None and level.cpu0[1] is not None else None
    L["machine_cpus_busy"] = (cpu1[2] - level.cpu0[2]) / wall if cpu1[2] is not None and level.cpu0[2] is not None else None
    if L["server_cpus_busy"] is not None and L["machine_cpus_busy"] is not None:
        # Everything else on the machine (other processes, the kernel's own work).
        L["other_cpus_busy"] = L["machine_cpus_busy"] - L["server_cpus_busy"] - L["client_cpus_busy"]
    return L


def summarize(clients, records, elapsed, warm_errors, args):
    ok = [r for r in records if r[0] == 200]
    errors = {}
    samples = {}
    for status, _, detail, _ in records:
        if status != 200:
            key = str(status)
            errors[key] = errors.get(key, 0) + 1
            samples.setdefault(key, detail)
    lat_ms = sorted(r[1] * 1e3 for r in ok)
    if len(lat_ms) >= 2:
        q = statistics.quantiles(lat_ms, n=100, method="inclusive")
        p50, p90, p99 = q[49], q[89], q[98]
    else:
        p50 = p90 = p99 = lat_ms[0] if lat_ms else float("nan")

    def mean(f):
        try:
            vals = [f(r[2]) for r in ok]
        except (KeyError, TypeError, ZeroDivisionError):  # a peer without proco-serve's timings
            return float("nan")
        return statistics.fmean(vals) if vals else float("nan")

    t = lambda d, k: d["timings_ms"][k]  # noqa: E731
    return {
        "clients": clients,
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "error_samples": samples,
        "warmup_errors_by_kind": warm_errors,
        "seconds": elapsed,
        "req_per_s": len(ok) / elapsed if elapsed > 0 else float("nan"),
        "latency_ms": {
            "mean": statistics.fmean(lat_ms) if lat_ms else float("nan"),
            "p50": p50,
            "p90": p90,
            "p99": p99,
            "max": lat_ms[-1] if lat_ms else float("nan"),
        },
        "server": {
            # Means over answers (so over images: a batch of B counts B times).
            "batch_size": mean(lambda d: d["batch_size"]),
            "inference_ms_per_image": mean(lambda d: t(d, "inference") / d["batch_size"]),
            "inference_ms_per_batch": mean(lambda d: t(d, "inference")),
            "posterior_ms_per_batch": mean(lambda d: t(d, "posterior")),
            "posterior_ms_per_image": mean(lambda d: t(d, "posterior") / d["batch_size"]),
            "decode_ms": mean(lambda d: t(d, "decode")),
            "queue_ms": mean(lambda d: t(d, "queue")),
            "total_ms": mean(lambda d: t(d, "total")),
        },
        "rule": ok[0][2].get("rule") if ok else None,
    }


# ---------------------------------------------------------------------------------------------
# Report.


def fmt(x, nd=1):
    return "nan" if x != x else f"{x:.{nd}f}"


def table(levels):
    head = ("| clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms | mean batch "
            "| inference ms/img | posterior ms/batch | posterior ms/img | server decode ms "
            "| server total ms |")
    lines = [head, head_sep(head)]
    for L in levels:
        s = L["server"]
        lat = L["latency_ms"]
        lines.append(
            f"| {L['clients']} | {L['requests']} | {L['errors']} | {fmt(L['req_per_s'])} "
            f"| {fmt(lat['p50'], 2)} | {fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} "
            f"| {fmt(s['batch_size'], 2)} | {fmt(s['inference_ms_per_image'], 3)} "
            f"| {fmt(s['posterior_ms_per_batch'], 4)} | {fmt(s['posterior_ms_per_image'], 4)} "
            f"| {fmt(s['decode_ms'], 3)} | {fmt(s['total_ms'], 2)} |"
        )
    return "\n".join(lines)


def head_sep(head):
    return "|" + "---|" * (head.count("|") - 1)


def baseline_rate(baseline, batch):
    for r in baseline["results"]:
        if r["batch_size"] == batch:
            return r
    return None


def ratios(levels, baseline, name):
    b1 = baseline_rate(baseline, 1)
    if b1 is None:
        return f"(baseline {name} has no batch-1 result)"
    out = [
        f"Baseline {name}: raw ONNX Runtime {fmt(b1['images_per_s'])} images/s at batch 1 "
        f"({fmt(b1['ms_per_image'], 3)} ms/image; intra-op threads "
        f"{baseline['session']['intra_op_num_threads']} = ONNX Runtime default).",
        "",
        "| clients | server req/s | / ORT images/s at batch 1 | mean batch | ORT images/s at "
        "batch round(mean) | / that | server inference ms/img / ORT ms/img at that batch "
        "| posterior / inference (per image) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for L in levels:
        s = L["server"]
        b = max(1, round(s["batch_size"])) if s["batch_size"] == s["batch_size"] else None
        rb = baseline_rate(baseline, b) if b else None
        frac = s["posterior_ms_per_image"] / s["inference_ms_per_image"]
        out.append(
            f"| {L['clients']} | {fmt(L['req_per_s'])} | {fmt(L['req_per_s'] / b1['images_per_s'], 3)} "
            f"| {fmt(s['batch_size'], 2)} "
            f"| {fmt(rb['images_per_s']) + f' (batch {b})' if rb else f'(batch {b} not measured)'} "
            f"| {fmt(L['req_per_s'] / rb['images_per_s'], 3) if rb else '-'} "
            f"| {fmt(s['inference_ms_per_image'] / rb['ms_per_image'], 2) if rb else '-'} "
            f"| {fmt(frac, 5)} ({fmt(100 * frac, 3)}%) |"
        )
    return "\n".join(out)


def report(result, baselines):
    print()
    m = result["meta"]
    print(f"proco-serve load test: {m['url']}, rule {result['levels'][0]['rule'] if result['levels'] else '?'}, "
          f"{m['images']} fixture JPEGs, warm-up {m['warmup_s']:g} s, {m['seconds_per_level']:g} s "
          f"or {m['max_requests']} requests per level, started {m['started_utc']}")
    print(f"machine: {m['machine']}; client and server share these CPUs")
    if m.get("started_server"):
        print(f"server: {' '.join(m['started_server'])} (binary built {m.get('binary_mtime_utc')}, git HEAD {m.get('git_head')})")
    print()
    print(table(result["levels"]))
    print()
    for L in result["levels"]:
        srv = L.get("server_cpus_busy")
        print(f"clients={L['clients']}: CPU time per second of the measured window: load-test client "
              f"{fmt(L.get('client_cpus_busy', float('nan')), 2)}, server "
              f"{fmt(srv, 2) if srv is not None else 'not measured (--url)'}, whole machine "
              f"{fmt(L['machine_cpus_busy'], 2) if L.get('machine_cpus_busy') is not None else '?'}"
              + (f", everything else {fmt(L['other_cpus_busy'], 2)}" if L.get("other_cpus_busy") is not None else "")
              + f" (of {os.cpu_count()} CPUs)")
    for L in result["levels"]:
        if L["errors"] or L["warmup_errors_by_kind"]:
            print(f"\nclients={L['clients']}: errors {L['errors_by_kind']} "
                  f"(warm-up: {L['warmup_errors_by_kind']}); first of each: {L['error_samples']}")
    for name, b in baselines:
        print()
        print(ratios(result["levels"], b, name))
    print()


def git_head():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, http://127.0.0.1:PORT (loopback only)")
    where.add_argument("--start", action="store_true", help=f"start {DEFAULT_BINARY} on 127.0.0.1:0")
    where.add_argument("--report", metavar="LT_JSON", help="print the report of a saved run and exit")
    ap.add_argument("--binary", default=DEFAULT_BINARY)
    ap.add_argument("--server-pid", type=int, default=None,
                    help="with --url: measure this process's CPU (with its child processes) as the server's")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for the started server (repeatable)")
    ap.add_argument("--server-log", default="target/loadtest-server.log", help="the started server's stderr (default under target/, which git ignores)")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    ap.add_argument("--max-requests", type=int, default=50000, help="measured requests per level, at most")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before each level")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request socket timeout, s")
    ap.add_argument("--query", default="", help="query string for /v1/classify, e.g. rule=vmf")
    ap.add_argument("--model", default="", help="classify with this model of the repository (/v1/models/NAME/classify); default: the default model")
    ap.add_argument("--fixtures", default=DEFAULT_FIXTURES)
    ap.add_argument("--baseline", action="append", default=[],
                    help="scripts/ort_baseline.py JSON to compute ratios against (repeatable)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    baselines = []
    for p in args.baseline:
        with open(p) as f:
            baselines.append((p, json.load(f)))

    if args.report:
        with open(args.report) as f:
            report(json.load(f), baselines)
        return 0

    try:
        levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"loadtest: bad --clients {args.clients!r}")
    if not levels or min(levels) < 1 or args.seconds <= 0 or args.max_requests < 1:
        raise SystemExit("loadtest: need clients >= 1, seconds > 0, max-requests >= 1")
    files = sorted(glob.glob(args.fixtures))
    if not files:
        raise SystemExit(f"loadtest: no images match {args.fixtures}")
    images = []
    for p in files:
        with open(p, "rb") as f:
            images.append(f.read())

    server = None
    if args.start:
        server = Server(args.binary, args.server_arg, args.server_log, args.ready_timeout)
        host, port = server.host, server.port
    else:
        host, port = parse_url(args.url)
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/health/ready")
            r = c.getresponse()
            r.read()
            c.close()
        except OSError as e:
            raise SystemExit(f"loadtest: {args.url} does not answer: {e}")
        if r.status != 200:
            raise SystemExit(f"loadtest: {args.url}/health/ready answered {r.status}, not 200")
    result = {
        "meta": {
            "url": f"http://{host}:{port}",
            "started_server": server.cmd if server else None,
            "binary_mtime_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.path.getmtime(server.cmd[0]))) if server else None,
            "git_head": git_head(),
            "images": len(images),
            "fixtures": args.fixtures,
            "query": args.query,
            "model": args.model,
            "warmup_s": args.warmup,
            "seconds_per_level": args.seconds,
            "max_requests": args.max_requests,
            "timeout_s": args.timeout,
            "machine": machine(),
            "loadavg_before": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "python": platform.python_version(),
        },
        "levels": [],
    }
    try:
        for c in levels:
            L = run_level(c, args, host, port, images, server.pid if server else args.server_pid)
            result["levels"].append(L)
            log(f"[clients={c}] {L['requests']} requests, {L['errors']} errors, "
                f"{fmt(L['req_per_s'])} req/s, p50 {fmt(L['latency_ms']['p50'], 2)} ms, "
                f"mean batch {fmt(L['server']['batch_size'], 2)}")
    finally:
        if server:
            server.stop()
            result["meta"]["server_exit_code"] = server.proc.returncode
    if os.path.exists("/proc/loadavg"):
        result["meta"]["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.json}")
    report(result, baselines)
    return 1 if any(L["errors"] for L in result["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
