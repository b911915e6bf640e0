#!/usr/bin/env python3
"""Summarises a scripts/bench-compare.sh run: one row per round and client count with both builds'
req/s, their ratio, and each build's req/s over raw ONNX Runtime batch-1 images/s (the mean of the
baselines that bracket the round); then the geometric mean of after / before over every row of every
run given. Usage: scripts/bench_compare_table.py OUT_DIR [OUT_DIR...]"""
import glob
import json
import os
import sys

import math


def ort_batch1(out, i):
    with open(f"{out}/ort-{i}.json") as f:
        return next(r["images_per_s"] for r in json.load(f)["results"] if r["batch_size"] == 1)


def levels(out, r, which):
    with open(f"{out}/loadtest-{r}-{which}.json") as f:
        return {lv["clients"]: lv["req_per_s"] for lv in json.load(f)["levels"]}


def cpu_ms(out, r, which):
    """The server's CPU milliseconds per answered request, per client count (None if unmeasured)."""
    with open(f"{out}/loadtest-{r}-{which}.json") as f:
        return {lv["clients"]: (lv["server_cpus_busy"] / lv["req_per_s"] * 1e3
                                if lv.get("server_cpus_busy") else None)
                for lv in json.load(f)["levels"]}


print("| run | round | clients | raw ORT batch 1 (images/s, mean of the bracketing baselines) | before req/s | after req/s | after / before | before / raw | after / raw |")
print("|---|---|---|---|---|---|---|---|---|")
ratios, before_raw, after_raw, cpu_ratios = [], [], [], []
for out in sys.argv[1:]:
    rounds = sorted({int(os.path.basename(p).split("-")[1]) for p in glob.glob(f"{out}/loadtest-*-before.json")})
    for r in rounds:
        raw = (ort_batch1(out, r - 1) + ort_batch1(out, r)) / 2
        b, a = levels(out, r, "before"), levels(out, r, "after")
        cb, ca = cpu_ms(out, r, "before"), cpu_ms(out, r, "after")
        for c in sorted(b):
            if cb[c] and ca[c]:
                cpu_ratios.append(ca[c] / cb[c])
            ratios.append(a[c] / b[c])
            before_raw.append(b[c] / raw)
            after_raw.append(a[c] / raw)
            print(f"| {out} | {r} | {c} | {raw:.1f} | {b[c]:.1f} | {a[c]:.1f} | {a[c] / b[c]:.2f} | {b[c] / raw:.2f} | {a[c] / raw:.2f} |")
gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
print(f"\ngeometric mean of after / before over {len(ratios)} pairs: {gm:.2f} "
      f"(smallest {min(ratios):.2f}, largest {max(ratios):.2f}); after ahead in "
      f"{sum(x > 1 for x in ratios)} of {len(ratios)}")
if cpu_ratios:
    gc = math.exp(sum(math.log(x) for x in cpu_ratios) / len(cpu_ratios))
    print(f"geometric mean of the server's CPU per request, after / before: {gc:.2f} "
          f"(smallest {min(cpu_ratios):.2f}, largest {max(cpu_ratios):.2f})")
print(f"mean server / raw ONNX Runtime: before {sum(before_raw) / len(before_raw):.2f}, "
      f"after {sum(after_raw) / len(after_raw):.2f}")
