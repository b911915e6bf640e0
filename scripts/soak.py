#!/usr/bin/env python3
"""Soak: steady load, hostile inputs, a reload storm and learning, all at once, for N seconds.

Starts the server (--binary, default target/release/proco-serve) on a scratch copy of the bundled
model, with an admin token, and runs side by side:
  * 16 keep-alive clients classifying the fixture JPEGs;
  * a hostile client: truncated and oversized images, a decompression bomb (a PNG header that
    claims 100000 x 100000 pixels), random bytes, broken multipart, bad query parameters;
  * a reload storm: a new prototypes file about every 0.5 s, every other one invalid, applied in
    turn by the file poll, SIGHUP and POST /admin/reload;
  * learning: one fixture image taught to its class every 2 s (POST /admin/prototypes/examples).
It checks: no 5xx; no dropped or reset connection on the load clients; every answer names a
prototypes version that was valid (a valid file written, a learned version acknowledged, or the
start); no invalid file ever served; resident memory at the end at most 2x its value after
warm-up; the server's own request counters equal what the clients saw. Prints one summary table
and exits non-zero on any failed check. Standard library only.

Usage: python3 scripts/soak.py [--seconds 600] [--binary target/release/proco-serve] [--json OUT]
"""
import argparse
import glob
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib

TOKEN = "soak"
FIXTURES = sorted(glob.glob("tests/fixtures/parity/*.jpg"))


def version_of(doc):
    body = {k: v for k, v in doc.items() if k != "version"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, binary, model_dir):
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--model-dir", model_dir,
             "--reload-poll-ms", "200", "--max-body-bytes", "262144", "--access-log", "off",
             "--log-level", "warn", "--drain-delay-ms", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("PROCO_")},
                 "PROCO_ADMIN_TOKEN": TOKEN})
        self.host, port = self.proc.stdout.readline().strip().rsplit(" ", 1)[1].split(":")
        self.port = int(port)
        for _ in range(600):
            try:
                if self.request("GET", "/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not become ready")

    def request(self, method, path, body=None, headers=None, conn=None):
        c = conn or http.client.HTTPConnection(self.host, self.port, timeout=30)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data


def multipart(parts):
    boundary = uuid.uuid4().hex
    out = b""
    for name, blob in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + blob + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_bomb():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100000)) + chunk(b"IEND", b"")


class Soak:
    def __init__(self, server, model_dir, seconds):
        self.server, self.model_dir, self.seconds = server, model_dir, seconds
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.images = [open(f, "rb").read() for f in FIXTURES]
        self.labels = [os.path.basename(f)[3:].rsplit("_", 1)[0] for f in FIXTURES]
        path = os.path.join(model_dir, "prototypes.json")
        self.path = path
        self.original = json.load(open(path))
        self.valid = {self.original["version"]}
        self.invalid = set()
        self.seen_versions = {}
        self.learn_errors = {}
        self.counts = {"load_200": 0, "load_other": {}, "load_conn_errors": 0,
                       "hostile": 0, "hostile_4xx": 0, "hostile_5xx": 0, "hostile_conn_errors": 0,
                       "reloads_valid": 0, "reloads_invalid": 0, "learned": 0, "learn_failed": 0}

    def bump(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def load_client(self, k):
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        i = k
        while not self.stop.is_set():
            try:
                status, data = self.server.request("POST", "/v1/classify", self.images[i % len(self.images)],
                                                   {"Content-Type": "image/jpeg"}, conn)
            except (OSError, http.client.HTTPException):
                self.bump("load_conn_errors")
                conn.close()
                conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
                continue
            if status == 200:
                v = json.loads(data)["prototypes_version"]
                with self.lock:
                    self.counts["load_200"] += 1
                    self.seen_versions[v] = self.seen_versions.get(v, 0) + 1
            else:
                with self.lock:
                    self.counts["load_other"][str(status)] = self.counts["load_other"].get(str(status), 0) + 1
            i += 1
        conn.close()

    def hostile_client(self):
        jpeg = self.images[0]
        rng = random.Random(1)
        cases = [
            ("/v1/classify", jpeg[: len(jpeg) // 2], "image/jpeg"),
            ("/v1/classify", jpeg * 400, "image/jpeg"),
            ("/v1/classify", png_bomb(), "image/png"),
            ("/v1/classify", bytes(rng.getrandbits(8) for _ in range(2000)), "application/octet-stream"),
            ("/v1/classify", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnope", "multipart/form-data; boundary=x"),
            ("/v1/classify?top_k=-1", jpeg, "image/jpeg"),
            ("/v1/classify?prior=1,2", jpeg, "image/jpeg"),
            ("/v1/classify?rule=softmax", jpeg, "image/jpeg"),
            ("/v1/classify?what=ever", jpeg, "image/jpeg"),
        ]
        i = 0
        while not self.stop.is_set():
            path, body, ctype = cases[i % len(cases)]
            i += 1
            try:
                status, _ = self.server.request("POST", path, body, {"Content-Type": ctype})
            except (OSError, http.client.HTTPException):
                self.bump("hostile_conn_errors")
                continue
            self.bump("hostile")
            if status >= 500:
                self.bump("hostile_5xx")
            elif status >= 400:
                self.bump("hostile_4xx")
            time.sleep(0.02)

    def reload_storm(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            doc = json.loads(json.dumps(self.original))
            for rule in doc["temperatures"]:
                doc["temperatures"][rule] *= 1 + 0.001 * i
            valid = i % 2 == 0
            if not valid:
                doc["classes"][0]["mu"] = [2 * v for v in doc["classes"][0]["mu"]]
            doc["version"] = version_of(doc)
            with self.lock:
                (self.valid if valid else self.invalid).add(doc["version"])
            tmp = self.path + ".soak-tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
            how = i % 3
            if how == 1:
                os.kill(self.server.proc.pid, signal.SIGHUP)
            elif how == 2:
                try:
                    self.server.request("POST", "/admin/reload", b"", {"Authorization": f"Bearer {TOKEN}"})
                except OSError:
                    pass
            self.bump("reloads_valid" if valid else "reloads_invalid")
            self.stop.wait(0.5)

    def learner(self):
        i = 0
        while not self.stop.wait(2.0):
            k = i % len(self.images)
            i += 1
            try:
                status, data = self.server.request(
                    "POST", f"/admin/prototypes/examples?label={self.labels[k]}", self.images[k],
                    {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"})
            except OSError:
                self.bump("learn_failed")
                continue
            if status == 200:
                with self.lock:
                    self.valid.add(json.loads(data)["version"])
                self.bump("learned")
            else:
                self.bump("learn_failed")
                with self.lock:
                    self.learn_errors[str(status)] = data[:200].decode("utf-8", "replace")

    def metric_sum(self, text, prefix):
        """The sum of the samples that start with `prefix`, whatever their `model` label."""
        total = 0.0
        for line in text.splitlines():
            if re.sub(r'model="[^"]*",?|,model="[^"]*"', "", line).startswith(prefix):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def run(self):
        pid = self.server.proc.pid
        threads = [threading.Thread(target=self.load_client, args=(k,), daemon=True) for k in range(16)]
        threads += [threading.Thread(target=f, daemon=True) for f in (self.hostile_client, self.reload_storm, self.learner)]
        started = time.time()
        for t in threads:
            t.start()
        time.sleep(min(10.0, self.seconds / 6))
        rss_warm = rss_kib(pid)
        rss_peak = rss_warm
        while time.time() - started < self.seconds:
            time.sleep(1.0)
            rss_peak = max(rss_peak, rss_kib(pid))
            elapsed = time.time() - started
            if int(elapsed) % 30 == 0:
                print(f"soak: {elapsed:.0f}/{self.seconds} s, {self.counts['load_200']} answers", file=sys.stderr, flush=True)
        self.stop.set()
        for t in threads:
            t.join(timeout=60)
        rss_end = rss_kib(pid)
        _, metrics = self.server.request("GET", "/metrics")
        metrics = metrics.decode()
        server_200 = self.metric_sum(metrics, 'proco_http_requests_total{route="/v1/classify",status="200"}')
        server_4xx = sum(self.metric_sum(metrics, f'proco_http_requests_total{{route="/v1/classify",status="{s}"}}')
                         for s in range(400, 500))
        served_invalid = sorted(set(self.seen_versions) & self.invalid)
        unknown = sorted(set(self.seen_versions) - self.valid)
        c = self.counts
        checks = {
            "no 5xx": c["hostile_5xx"] == 0 and not any(k.startswith("5") for k in c["load_other"]),
            "no dropped or reset connection (load clients)": c["load_conn_errors"] == 0,
            "every load answer 200": not c["load_other"],
            "every answer names a valid version": not unknown,
            "no invalid file ever served": not served_invalid,
            "RSS at the end <= 2x after warm-up": rss_end <= 2 * rss_warm,
            "server's 200 count on /v1/classify = load clients'": int(server_200) == c["load_200"],
            "server's 4xx count = hostile client's": int(server_4xx) == c["hostile_4xx"],
        }
        rows = [
            ("seconds", self.seconds), ("load answers (200)", c["load_200"]),
            ("load answers, other status", json.dumps(c["load_other"])),
            ("load connection errors", c["load_conn_errors"]),
            ("hostile requests / 4xx / 5xx / connection errors",
             f"{c['hostile']} / {c['hostile_4xx']} / {c['hostile_5xx']} / {c['hostile_conn_errors']}"),
            ("reload files written: valid / invalid", f"{c['reloads_valid']} / {c['reloads_invalid']}"),
            ("versions seen in answers", len(self.seen_versions)),
            ("learning requests acknowledged / failed", f"{c['learned']} / {c['learn_failed']}"),
            ("server: 200 / 4xx on /v1/classify", f"{int(server_200)} / {int(server_4xx)}"),
            ("server: reloads success / unchanged / rejected", " / ".join(
                str(int(self.metric_sum(metrics, f'proco_prototype_reloads_total{{result="{r}"}}')))
                for r in ("success", "unchanged", "rejected"))),
            ("RSS KiB after warm-up / peak / end", f"{rss_warm} / {rss_peak} / {rss_end}"),
        ]
        print("| soak | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        print("\n| check | result |\n|---|---|")
        for k, ok in checks.items():
            print(f"| {k} | {'pass' if ok else 'FAIL'} |")
        for status, sample in self.learn_errors.items():
            print(f"learning refused with {status}: {sample}", file=sys.stderr)
        if unknown:
            print(f"versions not known to be valid: {unknown}", file=sys.stderr)
        passed = sum(checks.values())
        print(f"\nsoak: {passed} passed, {len(checks) - passed} failed")
        return rows, checks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = tempfile.mkdtemp()
    model_dir = os.path.join(work, "model")
    shutil.copytree("models/cifar10-lt", model_dir, ignore=shutil.ignore_patterns("*.versions", "logs"))
    server = Server(args.binary, model_dir)
    try:
        rows, checks = Soak(server, model_dir, args.seconds).run()
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            code = "killed"
        stderr = server.proc.stderr.read()
        shutil.rmtree(work, ignore_errors=True)
    panicked = "panicked" in stderr
    print(f"server exit: {code}; panics in its log: {'yes' if panicked else 'no'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "checks": checks, "exit": code}, f, indent=1)
    sys.exit(0 if all(checks.values()) and code == 0 and not panicked else 1)


if __name__ == "__main__":
    main()
