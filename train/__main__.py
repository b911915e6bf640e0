"""Command line: `python -m train {fit,gpu-all,export,report,folders} ...` (see train/README.md)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="train one method (proco, la or ce)")
    f.add_argument("--method", choices=["proco", "la", "ce"], required=True)
    f.add_argument("--data", required=True, help="cifar10-jpeg.tar.xz or its unpacked folder")
    f.add_argument("--cache", default="data/cifar10_u8.npz", help="decoded-image cache (.npz)")
    f.add_argument("--out", default="runs/latest")
    f.add_argument("--epochs", type=int, default=200)
    f.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    f.add_argument("--batch", type=int, default=256)
    f.add_argument("--lr", type=float, default=0.3)
    f.add_argument("--workers", type=int, default=2, help="augmentation worker processes")
    f.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    f.add_argument("--time-budget", type=float, default=None, help="seconds; shrink the schedule once if needed")
    f.add_argument("--max-images", type=int, default=None, help="smoke tests only")
    f.add_argument("--seed", type=int, default=0)

    g = sub.add_parser("gpu-all", help="ProCo, LA and CE side by side on one GPU")
    g.add_argument("--data", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--time-budget", type=float, default=None)
    g.add_argument("--cache", default="/tmp/cifar10_u8.npz")
    g.add_argument("--device", default="cuda")
    g.add_argument("--max-images", type=int, default=None, help="smoke tests only")

    e = sub.add_parser("export", help="ONNX + prototypes (temperatures fitted on validation) + parity fixtures")
    e.add_argument("--runs", required=True, help="folder with proco.pt, la.pt, ce.pt and their logs")
    e.add_argument("--data", required=True)
    e.add_argument("--cache", default="data/cifar10_u8.npz")
    e.add_argument("--model-dir", default="models/cifar10-lt")
    e.add_argument("--fixtures", default="tests/fixtures/parity")

    r = sub.add_parser("report", help="recompute REPORT.md from the committed model files")
    r.add_argument("--data", required=True)
    r.add_argument("--cache", default="data/cifar10_u8.npz")
    r.add_argument("--model-dir", default="models/cifar10-lt")

    v = sub.add_parser("folders", help="write the validation split (and the LT training set) as <label>/*.jpg folders")
    v.add_argument("--data", required=True)
    v.add_argument("--cache", default="data/cifar10_u8.npz")
    v.add_argument("--out", required=True)
    v.add_argument("--with-train", action="store_true", help="also write the LT training subset")

    a = ap.parse_args(argv)
    if a.cmd == "fit":
        from .fit import run
        run(a.method, a.data, a.out, epochs=a.epochs, device=a.device, batch=a.batch, lr=a.lr, workers=a.workers,
            time_budget=a.time_budget, cache=a.cache, seed=a.seed, threads=a.threads, max_images=a.max_images)
    elif a.cmd == "gpu-all":
        gpu_all(a)
    elif a.cmd == "export":
        from .export import export_all
        export_all(a.runs, a.data, a.cache, a.model_dir, a.fixtures)
    elif a.cmd == "folders":
        from .data import write_folders
        write_folders(a.data, a.cache, a.out, a.with_train)
    elif a.cmd == "report":
        from .report import write_report
        write_report(a.data, a.cache, a.model_dir)


def gpu_all(a):
    """Decode once, then run the three methods as concurrent processes sharing the GPU and the cores."""
    from .data import load_cifar10
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    load_cifar10(a.data, a.cache)
    print(f"decoded CIFAR-10 in {time.time() - t0:.1f}s", flush=True)
    cores = os.cpu_count() or 4
    share = {"proco": max(1, cores // 3 + 1), "la": max(1, cores // 4), "ce": max(1, cores // 4)}
    procs = []
    for method, workers in share.items():
        budget = None if a.time_budget is None else a.time_budget - (time.time() - t0)
        cmd = [sys.executable, "-m", "train", "fit", "--method", method, "--data", a.data, "--cache", a.cache,
               "--out", a.out, "--epochs", str(a.epochs), "--device", a.device, "--workers", str(workers), "--threads", "1"]
        if budget:
            cmd += ["--time-budget", str(budget)]
        if a.max_images:
            cmd += ["--max-images", str(a.max_images)]
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    print(f"all runs finished in {time.time() - t0:.1f}s, exit codes {codes}", flush=True)
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
