#!/usr/bin/env python3
"""Two server builds give the same answers: every parity-fixture JPEG through POST /v1/classify
under every rule x prior (uniform, train, explicit weights), with the full posterior, on each
build; prints the largest absolute difference of any posterior entry per rule x prior, and exits
non-zero if any exceeds --tolerance (default 1e-12) or a top-1 or status differs.

A refactoring of the request path must leave these bit for bit: the JSON numbers round-trip
exactly, so the expected difference is 0.

Usage: python3 scripts/posterior_parity.py BEFORE_BINARY AFTER_BINARY [--json OUT]
Standard library only.
"""
import argparse
import glob
import http.client
import json
import subprocess
import sys

FIXTURES = sorted(glob.glob("tests/fixtures/parity/*.jpg"))
RULES = ["linear", "proco", "vmf", "ensemble"]
# An explicit prior: class i weighted i + 1 (normalised by the server).
PRIORS = ["uniform", "train", ",".join(str(i + 1) for i in range(10))]
LISTEN_PREFIX = "proco-serve listening on "


class Server:
    def __init__(self, binary):
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--access-log", "off",
             "--reload-poll-ms", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if line.startswith(LISTEN_PREFIX):
                host, port = line[len(LISTEN_PREFIX):].strip().rsplit(":", 1)
                self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
                break
        else:
            sys.exit(f"{binary} did not start")
        for _ in range(600):
            self.conn.request("GET", "/health/ready")
            response = self.conn.getresponse()
            response.read()
            if response.status == 200:
                return
            import time
            time.sleep(0.1)
        sys.exit(f"{binary} did not become ready")

    def classify(self, image, rule, prior):
        self.conn.request("POST", f"/v1/classify?rule={rule}&prior={prior}&posterior=true&top_k=1",
                          body=image, headers={"Content-Type": "image/jpeg"})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def answers(binary):
    server = Server(binary)
    try:
        out = {}
        for path in FIXTURES:
            with open(path, "rb") as f:
                image = f.read()
            for rule in RULES:
                for prior in PRIORS:
                    out[(path, rule, prior)] = server.classify(image, rule, prior)
        return out
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--tolerance", type=float, default=1e-12)
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    before, after = answers(args.before), answers(args.after)
    worst, failures = {}, []
    for key, (status_b, body_b) in before.items():
        status_a, body_a = after[key]
        if status_a != status_b or status_b != 200:
            failures.append(f"{key}: status {status_b} before, {status_a} after")
            continue
        if body_a["predictions"][0]["index"] != body_b["predictions"][0]["index"]:
            failures.append(f"{key}: top-1 differs")
        diff = max(abs(a - b) for a, b in zip(body_a["posterior"], body_b["posterior"]))
        rule_prior = (key[1], "explicit" if "," in key[2] else key[2])
        worst[rule_prior] = max(worst.get(rule_prior, 0.0), diff)
    print(f"{len(FIXTURES)} images x {len(RULES)} rules x {len(PRIORS)} priors, posterior=true")
    print("| rule | prior | largest absolute posterior difference |")
    print("|---|---|---|")
    for (rule, prior), diff in sorted(worst.items()):
        print(f"| {rule} | {prior} | {diff:.3g} |")
        if not diff <= args.tolerance:
            failures.append(f"{rule}/{prior}: {diff} > {args.tolerance}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": len(FIXTURES), "worst": {f"{r}/{p}": d for (r, p), d in worst.items()},
                       "failures": failures}, f, indent=1)
    for failure in failures:
        print("FAIL", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
