#!/usr/bin/env python3
"""Prints criterion's latest results for benches/vmf.rs (target/criterion) as a Markdown table."""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    mean = est["mean"]["point_estimate"]  # ns per iteration
    lo, hi = est["mean"]["confidence_interval"]["lower_bound"], est["mean"]["confidence_interval"]["upper_bound"]
    tp = meta.get("throughput") or {}
    extra = ""
    if "Elements" in tp:
        extra = f"{mean / tp['Elements'] / 1e3:.2f} us/image"
    elif "Bytes" in tp:
        extra = f"{tp['Bytes'] / mean:.2f} GB/s"
    name = meta["function_id"] + (f" / {meta['value_str']}" if meta.get("value_str") else "")
    rows.append((meta["group_id"], name, mean, lo, hi, extra))


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


print("| group | benchmark | mean per iteration (95% CI) | per image / bandwidth |")
print("|---|---|---|---|")
for g, n, m, lo, hi, extra in rows:
    print(f"| {g} | {n} | {fmt(m)} ({fmt(lo)} - {fmt(hi)}) | {extra} |")
