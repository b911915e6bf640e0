#!/usr/bin/env python3
"""Clients that give up: 32 clients on /v1/classify for --seconds, half of them patient, half
closing their connection when no answer came within --give-up-ms (default 5 ms). The server
(--binary, default target/release/proco-serve, started here) should do no encoder work for the
requests nobody waits for any more.

From the server's own counters, before and after the run:
  encoded   = proco_batch_size_sum            (images the encoder ran)
  abandoned = proco_abandoned_images_total    (queued images dropped unencoded)
and from the clients: answered (patient and impatient requests that got their answer in time)
and gave_up (impatient requests closed before their answer). Every request of this run is one
image, so encoded - answered is the encoder work done for clients that had gone (their images
were in a running batch already when they left). The rest of the requests given up cost no
encoder work: `abandoned` of them were dropped from the queue, and the others ended before they
were queued (while being read or decoded).

Writes OUT.json and prints the summary (--report: the summary of a saved run).
Standard library only.
Usage: python3 scripts/bench_abandon.py OUT.json [--binary B] [--seconds 10] [--clients 32]
       python3 scripts/bench_abandon.py OUT.json --report
"""
import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def start(binary):
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--access-log", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PROCO_")})
    addr = proc.stdout.readline().strip().removeprefix("proco-serve listening on ")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{addr}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, addr
        except OSError:
            time.sleep(0.1)
    sys.exit("the server did not become ready")


def counters(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()

    def total(name):
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return {"encoded": total("proco_batch_size_sum"),
            "abandoned": total("proco_abandoned_images_total")}


def client(addr, image, stop, give_up, tally, lock):
    host, port = addr.rsplit(":", 1)
    answered = gave_up = errors = 0
    conn = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/v1/classify", body=image,
                         headers={"Content-Type": "image/jpeg"})
            if give_up:
                conn.sock.settimeout(give_up)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                answered += 1
            else:
                errors += 1
            if give_up:
                conn.sock.settimeout(10)
        except (socket.timeout, TimeoutError):
            gave_up += 1
            conn.close()  # the client goes away; its request may still be queued
            conn = None
        except OSError:
            errors += 1
            conn.close()
            conn = None
    with lock:
        kind = "impatient" if give_up else "patient"
        tally[kind]["answered"] += answered
        tally[kind]["gave_up"] += gave_up
        tally[kind]["errors"] += errors


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--binary", default="target/release/proco-serve")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--give-up-ms", type=float, default=5)
    p.add_argument("--report", action="store_true", help="print the summary of a saved run")
    args = p.parse_args()
    if args.report:
        return summarize(json.loads(Path(args.out).read_text()))
    image = sorted(Path("tests/fixtures/parity").glob("*.jpg"))[0].read_bytes()
    proc, addr = start(args.binary)
    try:
        before = counters(addr)
        stop, lock = threading.Event(), threading.Lock()
        tally = {k: {"answered": 0, "gave_up": 0, "errors": 0} for k in ("patient", "impatient")}
        threads = [threading.Thread(target=client, args=(
            addr, image, stop, (args.give_up_ms / 1e3) if i % 2 else None, tally, lock))
            for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1)  # the last abandoned jobs reach the head of the queue
        after = counters(addr)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = {"binary": args.binary, "clients": args.clients, "seconds": args.seconds,
              "give_up_ms": args.give_up_ms, "tally": tally,
              "encoded": after["encoded"] - before["encoded"],
              "abandoned": after["abandoned"] - before["abandoned"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    summarize(result)


def summarize(r):
    tally = r["tally"]
    answered = tally["patient"]["answered"] + tally["impatient"]["answered"]
    gave_up = tally["impatient"]["gave_up"]
    encoded, abandoned = r["encoded"], r["abandoned"]
    print(f"{r['clients']} clients for {r['seconds']:.0f} s, half giving up after "
          f"{r['give_up_ms']:g} ms")
    print(f"answered in time: {answered} (patient {tally['patient']['answered']}, "
          f"impatient {tally['impatient']['answered']}); gave up: {gave_up}; errors: "
          f"{tally['patient']['errors'] + tally['impatient']['errors']}")
    print(f"images encoded: {encoded:.0f}; dropped unencoded (abandoned): {abandoned:.0f}; "
          f"encoded for clients already gone: {encoded - answered:.0f}")
    if gave_up:
        spared = gave_up - (encoded - answered)
        print(f"of the {gave_up} requests given up, {spared:.0f} ({spared / gave_up:.1%}) cost no "
              f"encoder work: {abandoned:.0f} dropped from the queue, {spared - abandoned:.0f} "
              f"ended before they were queued")

if __name__ == "__main__":
    main()
