"""The bfloat16 numerics check of CPU training: the first epochs of ProCo's 200-epoch schedule run in
float32 and under bfloat16 autocast from the same seed, and in bfloat16 from a second seed (the
noise between two runs that should be alike). bfloat16 passes when, at every epoch, its distance
to float32 is no larger than that seed-to-seed difference.

Reads train/numerics/{fp32-seed0,bf16-seed0,bf16-seed1}.log.jsonl (the `fit` logs, cut after the
same epoch) and prints the table train/README.md shows.

Usage: python3 train/numerics_table.py [--check FILE]   (--check: fail if FILE's table differs)
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "numerics"
RUNS = ["fp32-seed0", "bf16-seed0", "bf16-seed1"]


def epochs(run: str) -> dict:
    out = {}
    for line in (HERE / f"{run}.log.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == "epoch":
            out[e["epoch"]] = e
    return out


def table() -> str:
    logs = {run: epochs(run) for run in RUNS}
    shared = sorted(set.intersection(*(set(v) for v in logs.values())))
    rows = ["| epoch | loss fp32 (seed 0) | loss bf16 (seed 0) | loss bf16 (seed 1) | bf16 - fp32 (seed 0) "
            "| seed 1 - seed 0 (bf16) | s / epoch fp32 | s / epoch bf16 |",
            "|---|---|---|---|---|---|---|---|"]
    for ep in shared:
        f, b0, b1 = (logs[r][ep] for r in RUNS)
        rows.append(f"| {ep} | {f['loss']:.4f} | {b0['loss']:.4f} | {b1['loss']:.4f} | "
                    f"{b0['loss'] - f['loss']:+.4f} | {b1['loss'] - b0['loss']:+.4f} | "
                    f"{f['epoch_seconds']:.0f} | {b0['epoch_seconds']:.0f} |")
    inside = [abs(logs["bf16-seed0"][e]["loss"] - logs["fp32-seed0"][e]["loss"])
              <= abs(logs["bf16-seed1"][e]["loss"] - logs["bf16-seed0"][e]["loss"]) for e in shared]
    rows.append("")
    rows.append(f"bfloat16 against float32 (same seed) moved the epoch loss less than a second seed did at "
                f"{sum(inside)} of {len(shared)} epochs: bfloat16 is "
                f"{'within' if all(inside) else 'NOT within'} the seed-to-seed noise over epochs "
                f"{shared[0]}-{shared[-1]}.")
    return "\n".join(rows) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", type=Path)
    args = p.parse_args()
    text = table()
    if args.check:
        if args.check.read_text() != text:
            sys.exit(f"{args.check} is not what train/numerics_table.py computes; regenerate it")
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
