#!/usr/bin/env python3
"""Idle CPU of the server with ort_spinning on and off: start it, send 200 requests, wait 1 s, then read
its CPU time over 10 s with no request. Usage: python3 scripts/idle_cpu.py (uses target/release/proco-serve)."""
import subprocess, time, http.client, sys, os, glob
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
for spin in ["true", "false"]:
    p = subprocess.Popen(["target/release/proco-serve", "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--access-log", "off", f"--ort-spinning={spin}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    host, port = p.stdout.readline().split()[-1].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port))
    while True:
        try:
            c.request("GET", "/health/ready"); r = c.getresponse(); r.read()
            if r.status == 200: break
        except OSError: time.sleep(0.1)
    img = open(sorted(glob.glob("tests/fixtures/parity/*.jpg"))[0], "rb").read()
    for _ in range(200):
        c.request("POST", "/v1/classify", img, {"Content-Type": "image/jpeg"}); c.getresponse().read()
    time.sleep(1)
    a = cpu(p.pid); time.sleep(10); b = cpu(p.pid)
    print(f"ort_spinning={spin}: idle server CPU over 10 s after a burst: {b - a:.2f} s ({(b - a) / 10 * 100:.1f}% of a core)")
    p.terminate(); p.wait()
