#!/usr/bin/env python3
"""Writes models/cifar10-lt/DECISIONS.md from the committed eval reports (standard library only).

Inputs (all committed, all written by `proco-serve eval`):
  models/cifar10-lt/decisions/test.json         balanced test set, --fit-conformal on the validation split
  models/cifar10-lt/decisions/shift-train.json  the test set subsampled to the training prior
  models/cifar10-lt/prototypes.json             the conformal scores (per class counts)

For class-conditional sets the report checks every class against the finite-sample slack: with
n calibration scores of a class and k = ceil((n+1)(1-a)), the coverage of the served set on
that class, given the calibration draw, is Beta(k, n+1-k); on m test images of the class the
empirical coverage is then Beta-Binomial(m, k, n+1-k) / m. The bound is that distribution's
delta / C quantile (delta = 0.05, Bonferroni over the C classes): if the guarantee holds, every
class is above its bound with probability at least 95%.

    python3 scripts/decisions_report.py            # writes models/cifar10-lt/DECISIONS.md
    python3 scripts/decisions_report.py --check    # exits 1 if the file is not what it would write
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from generated_file import write_or_check

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cifar10-lt"
OUT = MODEL / "DECISIONS.md"
DELTA = 0.05


def rank(n: int, level: float) -> int:
    """ceil((n+1) * level), as the server computes it."""
    return math.ceil((n + 1) * level - 1e-9)


def beta_binomial_quantile(m: int, a: float, b: float, q: float) -> int:
    """Smallest x with P(X <= x) >= q for X ~ Beta-Binomial(m, a, b)."""
    log_beta = lambda x, y: math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)
    total = 0.0
    for x in range(m + 1):
        log_choose = math.lgamma(m + 1) - math.lgamma(x + 1) - math.lgamma(m - x + 1)
        total += math.exp(log_choose + log_beta(x + a, m - x + b) - log_beta(a, b))
        if total >= q:
            return x
    return m


def class_bound(n: int, m: int, level: float, classes: int) -> float:
    """The empirical coverage below which a class is out of line with the guarantee."""
    k = rank(n, level)
    return beta_binomial_quantile(m, k, n + 1 - k, DELTA / classes) / m


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def size(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def sets_table(report: dict, counts: dict, labels: list[str]) -> tuple[list[str], list[str]]:
    """The markdown rows and, per rule and level, what the class-conditional check found."""
    kept = report["shift"]["kept"] if report.get("shift") else report["per_class"]
    lines = [
        "| rule | set | level | coverage | worst class | its coverage | classes below the slack bound | mean size | many | medium | few |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for row in report["prediction_sets"]:
        below = [
            l for l in labels
            if row["class_coverage"][l] < class_bound(counts[l], kept[l], row["level"], len(labels))
        ]
        below_text = ", ".join(below) if below else "none"
        lines.append(
            f"| {row['rule']} | {row['kind']} | {row['level']} | {pct(row['coverage'])} | {row['worst_class']} "
            f"| {pct(row['worst_class_coverage'])} | {below_text} | {size(row['mean_size'])} "
            f"| {size(row['mean_size_many'])} | {size(row['mean_size_medium'])} | {size(row['mean_size_few'])} |"
        )
        if row["kind"] == "class":
            verdicts.append((row["rule"], row["level"], below))
    return lines, verdicts


def bounds_table(counts: dict, kept: dict, labels: list[str], level: float) -> str:
    cells = [f"{l} {pct(class_bound(counts[l], kept[l], level, len(labels)))}" for l in labels]
    return ", ".join(cells)


def risk_table(report: dict) -> list[str]:
    lines = [
        "| rule | answer all | abstain below 0.5 | 0.6 | 0.7 | 0.8 | 0.9 |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, data in report["risk_coverage"]["rules"].items():
        full = data["by_share"][-1]["accuracy"]
        cells = [f"{pct(t['answered'])}% answered, {pct(t['accuracy'])}%" for t in data["by_threshold"]]
        lines.append(f"| {rule} | {pct(full)}% | " + " | ".join(cells) + " |")
    return lines


def render() -> str:
    protos = json.loads((MODEL / "prototypes.json").read_text())
    labels = protos["labels"]
    scores = protos["conformal"]["rules"]["ensemble"]["scores"]
    counts = {l: len(s) for l, s in zip(labels, scores)}
    balanced = json.loads((MODEL / "decisions" / "test.json").read_text())
    shifted = json.loads((MODEL / "decisions" / "shift-train.json").read_text())
    out = [
        "# Calibrated decisions with the bundled model",
        "",
        "Written by `python3 scripts/decisions_report.py` from the committed reports of `proco-serve eval`",
        "(`models/cifar10-lt/decisions/`); rerun the commands at the end to recompute them.",
        "",
        f"Conformal scores: `{protos['conformal']['score']}` on {protos['conformal']['calibration_data']},",
        f"{min(counts.values())} to {max(counts.values())} per class. Coverage and sizes are in %; a class is",
        f"*below the slack bound* when its empirical coverage is under the {DELTA}/C quantile of the",
        "Beta-Binomial law its coverage follows if the class-conditional guarantee holds (see the script).",
        "",
    ]
    for title, report in (("Balanced test set (10,000 images)", balanced),
                          (f"Label-shifted test set (`--shift train`, {shifted['images']:,} images)", shifted)):
        lines, verdicts = sets_table(report, counts, labels)
        kept = report["shift"]["kept"] if report.get("shift") else report["per_class"]
        out += [f"## {title}", "", *lines, ""]
        out.append(f"Slack bounds at 0.9 (per class, %): {bounds_table(counts, kept, labels, 0.9)}.")
        out.append("")
        failing = [(r, lvl, b) for r, lvl, b in verdicts if b]
        if failing:
            out.append("Class-conditional sets below the bound: " + "; ".join(
                f"{r} at {lvl}: {', '.join(b)}" for r, lvl, b in failing) + ".")
        else:
            out.append("Class-conditional sets: every class of every rule is within the slack bound at every level.")
        marginal_worst = {(r["rule"], r["level"]): r for r in report["prediction_sets"] if r["kind"] == "marginal"}
        class_worst = {(r["rule"], r["level"]): r for r in report["prediction_sets"] if r["kind"] == "class"}
        worse = [k for k in marginal_worst
                 if marginal_worst[k]["worst_class_coverage"] < class_worst[k]["worst_class_coverage"]]
        out.append(
            f"Marginal sets cover their worst class less than class-conditional sets do in {len(worse)} of "
            f"{len(marginal_worst)} rule x level cases"
            + (": " + ", ".join(f"{r} {lvl} ({pct(marginal_worst[(r, lvl)]['worst_class_coverage'])} vs "
                               f"{pct(class_worst[(r, lvl)]['worst_class_coverage'])})" for r, lvl in worse) if worse else "")
            + ".")
        out.append("")
    out += ["## Abstention: accuracy on the answered images (balanced test set, uniform prior)", "",
            *risk_table(balanced), "",
            "![risk-coverage](decisions/risk-coverage.png)",
            "",
            "x: share of images answered (0 to 1); y: accuracy on them (0.7 to 1); linear blue, proco red, vmf green, ensemble purple.",
            "",
            "## Commands", "",
            "```sh",
            "# all of it, with the rest of the model's files: scripts/ship_model.sh RUNS cifar10-png.tar.xz cifar10-jpeg.tar.xz",
            "python -m train folders --data cifar10-png.tar.xz --out data/png-splits   # data/png-splits/val",
            "mkdir -p data/png && tar xJf cifar10-png.tar.xz -C data/png test          # data/png/test",
            "cargo build --release",
            "target/release/proco-serve eval --data data/png/test --fit-conformal data/png-splits/val --write-prototypes models/cifar10-lt/prototypes.json \\",
            "    --prior uniform --report models/cifar10-lt/decisions/test.json --risk-coverage models/cifar10-lt/decisions/risk-coverage.png \\",
            "    --export-scores scores.json && gzip -9 -c scores.json > models/cifar10-lt/decisions/scores.json.gz",
            "target/release/proco-serve eval --data data/png/test --shift train --prior uniform --report models/cifar10-lt/decisions/shift-train.json",
            "python3 scripts/decisions_report.py",
            "bash tests/conformal/run.sh          # the same sets from crepes",
            "```", ""]
    return "\n".join(out)


def main() -> int:
    return write_or_check(OUT, render(), "--check" in sys.argv[1:], "python3 scripts/decisions_report.py")


if __name__ == "__main__":
    sys.exit(main())
