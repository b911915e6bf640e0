"""Recompute models/cifar10-lt/REPORT.md (+ report.json, reliability.png) from the committed files:
the ONNX encoders, prototypes.json, the training logs and the CIFAR-10 data. Nothing is copied from a log
but the training facts (epochs, wall time, device); every metric is recomputed here."""
from __future__ import annotations

import json
import os
import platform
import re
import sys

import numpy as np

from . import data as D
from . import metrics as M
from . import onnx_io
from .rules import RULES, balanced_logits

PAPER_TOP1 = 0.859  # ProCo, CIFAR-10-LT, imbalance 100, 200 epochs (Du et al., TPAMI 2024, Table 1)
METRIC_COLS = ("top1", "many", "medium", "few", "ece", "nll", "brier")
TRAINED = ("proco", "la", "ce", "ldam")
# Report rows of the baselines: (key in results["models"], label). CE's one encoder gives two rows.
BASELINE_ROWS = (("ce", "CE"), ("ce_posthoc_la", "CE + post-hoc LA"), ("la", "LA"), ("ldam", "LDAM-DRW"))
METHOD_NAMES = {"proco": "ProCo", "la": "LA", "ce": "CE", "ldam": "LDAM-DRW"}


def _read_log(path, provenance=None):
    """Training facts of one run from its log; `provenance` (logs/provenance.json, written by export) names the
    training data of runs whose log predates the start event's `data` field."""
    facts, epoch_seconds, resumes = {}, [], 0
    if not os.path.exists(path):
        return facts
    for line in open(path):
        rec = json.loads(line)
        resumes += rec["event"] == "resume"  # a paused run continued from its checkpoint
        if rec["event"] == "start":
            facts.update(device=rec.get("device_name"), on_gpu=str(rec.get("device", "")).startswith("cuda"),
                         torch=rec.get("torch"), planned_epochs=rec["epochs"],
                         train_images=rec["train_images"], data=rec.get("data") or (provenance or {}).get("data"),
                         amp=rec.get("amp"))
        elif rec["event"] == "rescale":
            facts["rescale"] = rec["reason"]
        elif rec["event"] == "done":
            facts.update(epochs=rec["epochs"], train_seconds=rec["train_seconds"])
        elif rec["event"] == "epoch":
            facts["last_train_acc"] = rec["train_acc"]
            if "epoch_seconds" in rec:
                epoch_seconds.append(rec["epoch_seconds"])
    if epoch_seconds:
        facts["median_epoch_seconds"] = float(np.median(epoch_seconds))
    facts["resumes"] = resumes
    return facts


def _seconds(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _row(name, m):
    pct = lambda v: "n/a" if v != v else f"{100 * v:.2f}"  # NaN: no class in that group
    return (f"| {name} | {pct(m['top1'])} | {pct(m['many'])} | {pct(m['medium'])} | {pct(m['few'])} | "
            f"{pct(m['ece'])} | {m['nll']:.4f} | {m['brier']:.4f} |")


HEADER = ("| model / rule | top-1 % | many % | medium % | few % | ECE % | NLL | Brier |\n"
          "|---|---|---|---|---|---|---|---|")


def write_report(source: str, cache: str, model_dir: str):
    cifar = D.load_cifar10(source, cache)
    _, val_idx = D.long_tailed_split(cifar.train_y)
    val_x, val_y = cifar.train_x[val_idx], cifar.train_y[val_idx]
    test_x, test_y = cifar.test_x, cifar.test_y
    proto = json.load(open(os.path.join(model_dir, "prototypes.json")))
    counts = np.array([c["count"] for c in proto["classes"]], float)
    mu = np.array([c["mu"] for c in proto["classes"]])
    kappa = np.array([c["kappa"] for c in proto["classes"]])
    log_pi = np.log(counts / counts.sum())
    log_u = np.full(len(counts), -np.log(len(counts)))
    log_val = np.log(np.bincount(val_y, minlength=len(counts)) / len(val_y))

    results = {"models": {}, "proco_rules": {}}

    def score(name, g_val, g_test):
        t = M.fit_temperature(g_val, val_y, log_val)
        return {"temperature": t, "uncalibrated": M.evaluate(g_test, 1.0, log_u, test_y, counts),
                "calibrated": M.evaluate(g_test, t, log_u, test_y, counts), "name": name}

    print("ProCo encoder", flush=True)
    sess = onnx_io.session(os.path.join(model_dir, "encoder.onnx"))
    zv, fv, _ = onnx_io.encode(sess, val_x, label="validation")
    zt, ft, _ = onnx_io.encode(sess, test_x, label="test")
    for rule in RULES:
        gv = balanced_logits(rule, zv, fv, mu, kappa, counts, proto["tau"], proto["alpha"])
        gt = balanced_logits(rule, zt, ft, mu, kappa, counts, proto["tau"], proto["alpha"])
        results["proco_rules"][rule] = score(rule, gv, gt)
        results["proco_rules"][rule]["temperature_in_prototypes"] = proto["temperatures"][rule]
    for base in ("la", "ce", "ldam"):
        path = os.path.join(model_dir, "baselines", f"{base}.onnx")
        if not os.path.exists(path):
            continue
        print(f"{base.upper()} encoder", flush=True)
        s = onnx_io.session(path)
        _, fv_b, _ = onnx_io.encode(s, val_x, label="validation")
        _, ft_b, _ = onnx_io.encode(s, test_x, label="test")
        if base == "ce":
            # A plain-CE head learns ln p(y|x) under the training prior: scored as it is (plain CE) and with
            # ln pi subtracted (post-hoc logit adjustment, Menon et al. 2021).
            results["models"]["ce"] = score("ce", fv_b, ft_b)
            results["models"]["ce_posthoc_la"] = score("ce_posthoc_la", fv_b - log_pi[None, :], ft_b - log_pi[None, :])
        else:
            results["models"][base] = score(base, fv_b, ft_b)
    prov_path = os.path.join(model_dir, "logs", "provenance.json")
    prov = json.load(open(prov_path)) if os.path.exists(prov_path) else {}
    results["training"] = {m: _read_log(os.path.join(model_dir, "logs", f"{m}.log.jsonl"), prov.get(m)) for m in TRAINED}
    results["default_rule"] = proto["default_rule"]
    results["prototypes_version"] = proto["version"]
    json.dump(results, open(os.path.join(model_dir, "report.json"), "w"), indent=1)
    _plot(results, os.path.join(model_dir, "reliability.png"), proto["default_rule"], zt, ft, mu, kappa, counts, proto, test_y, log_u, model_dir)
    _markdown(results, proto, os.path.join(model_dir, "REPORT.md"), source)
    print(f"wrote {model_dir}/REPORT.md, report.json, reliability.png")


def _plot(results, path, default_rule, zt, ft, mu, kappa, counts, proto, test_y, log_u, model_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = balanced_logits(default_rule, zt, ft, mu, kappa, counts, proto["tau"], proto["alpha"])
    t = results["proco_rules"][default_rule]["temperature"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, temp, title in ((axes[0], 1.0, "before temperature scaling"), (axes[1], t, f"after (T = {t:.3g})")):
        bins = M.reliability(M.posterior(g, temp, log_u), test_y)
        edges = np.linspace(0, 1, 16)
        acc_by_bin = np.zeros(15)
        for conf, acc, n in bins:
            acc_by_bin[min(14, max(0, int(np.ceil(conf * 15)) - 1))] = acc
        ax.bar(edges[:-1], acc_by_bin, width=1 / 15, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ece = M.ece(M.posterior(g, temp, log_u), test_y)
        ax.set_title(f"ProCo '{default_rule}' rule, {title}\nECE {100 * ece:.2f}%")
        ax.set_xlabel("confidence (top label)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left")
    fig.suptitle("CIFAR-10 test set (balanced, uniform prior)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _console_facts(path: str, training: dict) -> str:
    """The GPU command's own account of the machine and its wall time (logs/console.log), while a shipped run
    comes from it."""
    if not any(f.get("on_gpu") for f in training.values()):
        return "Every run trained on the CPU and logs every epoch in `logs/<method>.log.jsonl`."
    if not os.path.exists(path):
        return "The runs on the CPU log every epoch in `logs/<method>.log.jsonl`."
    text = open(path).read()
    gpu = re.search(r"device=cuda device_name=(.+?) train_images", text)
    wall = re.search(r"all runs finished in ([0-9.]+)s", text)
    return ("The runs on a GPU came from one `python -m train all` command on " + (f"one {gpu.group(1)}" if gpu else "a GPU")
            + (f", {float(wall.group(1)):.0f} s of wall time for all of them" if wall else "")
            + " (`logs/console.log`); the runs on the CPU log every epoch in `logs/<method>.log.jsonl`.")


def _epochs_note(tr) -> str:
    done = {m: tr[m].get("epochs") for m in TRAINED if tr.get(m)}
    short = {m: e for m, e in done.items() if e != tr[m].get("planned_epochs")}
    if not short:
        return f"Every run trained its full schedule ({', '.join(f'{m}: {e}' for m, e in done.items())} epochs)."
    return ("Not every run trained its full schedule: " + ", ".join(
        f"{METHOD_NAMES[m]} {e} of {tr[m].get('planned_epochs')} epochs ({tr[m].get('rescale') or 'stopped early'})"
        for m, e in short.items()) + ". Those rows are not a like-for-like comparison with the full runs.")


def _markdown(r, proto, path, source):
    tr = r["training"]
    lines = ["# CIFAR-10-LT (imbalance 100): ProCo against CE, CE + post-hoc LA, LA and LDAM-DRW", "",
             f"Generated by `python -m train report --data {os.path.basename(os.path.normpath(source))}` from the committed encoders",
             "(`encoder.onnx`, `baselines/*.onnx`), `prototypes.json` and `logs/`. Do not edit by hand.", "",
             "## Data", "",
             f"- Training: CIFAR-10-LT, {tr['proco'].get('train_images', '?')} images (numpy seed 0 per-class shuffle; "
             "class 0 keeps 4,900 of its 5,000 so that 100 can go to validation), from the copy of CIFAR-10 each run names "
             "below: the lossless PNG copy (the paper's pixels) or the JPEG re-encoding.",
             f"- Evaluation: the images of `{os.path.basename(os.path.normpath(source))}`.",
             "- Validation (temperature fitting only): 1,000 training images the LT subset did not keep, 100 per class.",
             "- Test: the balanced 10,000-image CIFAR-10 test set, uniform target prior.",
             "- Shot groups (official split): many > 100 training images, medium 20-100, few < 20. CIFAR-10-LT at "
             "imbalance 100 has no class under 20 images, so 'few' is n/a.", "",
             "## Training runs", "",
             "Wall time is the training itself, summed over the pieces of a run that paused (`--max-seconds`) and "
             "was resumed from its checkpoint; the median epoch includes epochs slowed by other work on the machine.", "",
             "| method | epochs | training data | wall time (s) | resumes | median epoch (s) | device | bfloat16 | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in TRAINED:
        f = tr.get(m, {})
        if f:
            amp = {True: "yes", False: "no"}.get(f.get("amp"), "GPU only")
            lines.append(f"| {METHOD_NAMES[m]} | {f.get('epochs')} (planned {f.get('planned_epochs')}) | "
                         f"{f.get('data') or 'not recorded (JPEG copy)'} | {f.get('train_seconds')} | "
                         f"{f.get('resumes', 'n/a')} | {_seconds(f.get('median_epoch_seconds'))} | {f.get('device')} | "
                         f"{amp} | {f.get('rescale', '')} |")
    lines += ["", "## Methods compared (uniform prior, test set)", "",
              "ProCo is shown with the official test rule (its linear head) and with the served default rule. "
              "Calibrated rows use the temperature fitted on the validation set.", "", HEADER]
    for cal in ("uncalibrated", "calibrated"):
        lines.append(_row(f"ProCo, linear head, {cal}", r["proco_rules"]["linear"][cal]))
        lines.append(_row(f"ProCo, {r['default_rule']} rule (default), {cal}", r["proco_rules"][r["default_rule"]][cal]))
        for b, label in BASELINE_ROWS:
            if b in r["models"]:
                lines.append(_row(f"{label}, {cal}", r["models"][b][cal]))
    lines += ["", "## ProCo inference rules, before and after temperature scaling", "", HEADER]
    for rule in RULES:
        x = r["proco_rules"][rule]
        lines.append(_row(f"{rule}, T = 1", x["uncalibrated"]))
        lines.append(_row(f"{rule}, T = {x['temperature']:.4g}", x["calibrated"]))
    best = max(r["proco_rules"].values(), key=lambda x: x["calibrated"]["top1"])
    lin = r["proco_rules"]["linear"]["uncalibrated"]["top1"]
    lines += ["", "## Against the paper", "",
              f"The paper reports {100 * PAPER_TOP1:.1f}% top-1 for ProCo on CIFAR-10-LT (imbalance 100, 200 epochs). "
              f"This model's official test rule (linear head) gets {100 * lin:.2f}% "
              f"({100 * (lin - PAPER_TOP1):+.2f} points); the best rule, {best['name']}, gets {100 * best['calibrated']['top1']:.2f}%.",
              "The side-by-side table with top-5, the official log's figures and what differs from the official run "
              "is [COMPARISON.md](COMPARISON.md) (`python3 scripts/comparison_table.py`).", "",
              _epochs_note(tr), "",
              "ProCo against the baselines (calibrated, uniform prior): " + ", ".join(
                  f"{label} {100 * r['models'][b]['calibrated']['top1']:.2f}%" for b, label in BASELINE_ROWS if b in r["models"])
              + f"; ProCo ({r['default_rule']}) {100 * r['proco_rules'][r['default_rule']]['calibrated']['top1']:.2f}%.", "",
              "![reliability diagram](reliability.png)", "",
              "## Reproduce", "",
              _console_facts(os.path.join(os.path.dirname(path), "logs", "console.log"), tr), "",
              "```sh",
              "python3 -m venv .venv && .venv/bin/pip install -r train/requirements.txt",
              "# one method, 200 epochs, on the CPU in pieces of at most --max-seconds (exit 3 = paused; the same",
              "# command resumes it bit for bit) or on a GPU with --device cuda; train/README.md has the details",
              "python -m train fit --method proco --data cifar10-png.tar.xz --out train/checkpoints/cifar10-png \\",
              "    --device cpu --threads 2 --resume --max-seconds 8100 --ckpt-every 5",
              "# export, conformal scores, INT8, eval reports, this report, COMPARISON.md and FEWSHOT.md:",
              "scripts/ship_model.sh train/checkpoints/cifar10-png cifar10-png.tar.xz cifar10-jpeg.tar.xz",
              "# a finished baseline run (la, ce, ldam) beside it",
              "scripts/ship_baseline.sh la train/checkpoints/cifar10-png cifar10-png.tar.xz",
              "```", "",
              f"Report computed on {platform.machine()} with Python {sys.version.split()[0]}, ONNX Runtime (CPU)."]
    open(path, "w").write("\n".join(lines) + "\n")
