"""Command line: `python -m train {fit,all,export,report,folders,import-official} ...` (see train/README.md)."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time


from .fit import METHODS


def _common(p):
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--pipeline", choices=["batch", "per-image"], default="batch",
                   help="batch: uint8 images on the device, batched augmentation there; per-image: PIL in workers")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 autocast (float32 throughout); autocast is on by default on CUDA and on CPUs with "
                        "native bfloat16 (AVX-512 BF16 or AMX), where it is measured faster")
    p.add_argument("--ckpt-every", type=int, default=10, help="checkpoint every K epochs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/METHOD.ckpt.pt when it exists")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock limit: checkpoint and stop (exit 3) before an epoch that would pass it; "
                        "the schedule itself never changes")
    p.add_argument("--limit-batches", type=int, default=None, help="smoke runs only: at most this many steps per epoch")
    p.add_argument("--max-images", type=int, default=None, help="smoke tests only: a random subset of the LT set")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="train one method (proco, la, ce or ldam)")
    f.add_argument("--method", choices=list(METHODS), required=True)
    f.add_argument("--data", required=True, help="cifar10-png.tar.xz, cifar10-jpeg.tar.xz or an unpacked folder")
    f.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10",
                   help="cifar100: CIFAR-100-LT (the PNG copy's train/<label>/*.png folders), as the official --dataset")
    f.add_argument("--cache", default=None, help="decoded-image cache (.npz; default data/<archive name>_u8.npz)")
    f.add_argument("--out", default="runs/latest")
    _common(f)
    f.add_argument("--batch", type=int, default=256)
    f.add_argument("--lr", type=float, default=0.3)
    f.add_argument("--workers", type=int, default=2, help="augmentation worker processes (--pipeline per-image)")
    f.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    f.add_argument("--warmup-steps", type=int, default=None, help="only time this many steps (after 3 untimed) and exit")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--compile", action="store_true",
                   help="torch.compile the network's forward pass (measured in train/README.md: not faster here)")

    g = sub.add_parser("all", aliases=["gpu-all"], help="every method side by side on one device, after a timed warm-up")
    g.add_argument("--data", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--cache", default=None)
    g.add_argument("--methods", default=",".join(METHODS))
    _common(g)
    g.add_argument("--warmup", type=int, default=20, help="timed steps per method before the estimate")
    g.add_argument("--allow-pause", action="store_true",
                   help="with --max-seconds: start even if the estimate exceeds it (the runs checkpoint and pause)")

    e = sub.add_parser("export", help="ONNX + prototypes (temperatures fitted on validation) + parity fixtures")
    e.add_argument("--runs", required=True, help="folder with proco.pt, la.pt, ce.pt and their logs")
    e.add_argument("--data", required=True)
    e.add_argument("--cache", default=None)
    e.add_argument("--model-dir", default="models/cifar10-lt")
    e.add_argument("--fixtures", default="tests/fixtures/parity")
    e.add_argument("--methods", default="proco,la,ce,ldam",
                   help="the finished runs to export; without proco only the baselines' encoders and logs (the bundled "
                        "model, its prototypes and fixtures stay)")
    e.add_argument("--fixtures-data", default=None,
                   help="archive the parity images come from (default: --data); the JPEG copy keeps the JPEG decoder under test")

    r = sub.add_parser("report", help="recompute REPORT.md from the committed model files")
    r.add_argument("--data", required=True)
    r.add_argument("--cache", default=None)
    r.add_argument("--model-dir", default="models/cifar10-lt")

    v = sub.add_parser("folders", help="write the validation split (and the LT training set) as <label>/*.jpg folders")
    v.add_argument("--data", required=True)
    v.add_argument("--cache", default=None)
    v.add_argument("--out", required=True)
    v.add_argument("--with-train", action="store_true", help="also write the LT training subset")

    o = sub.add_parser("import-official", help="a checkpoint of the official ProCo code as a servable model folder")
    o.add_argument("ckpt", help="ckpt.pth.tar written by the official code (CIFAR ResNet-32, ImageNet ResNet-50/ResNeXt-50)")
    o.add_argument("--classes", required=True, help="CLASSES.txt: one label a line, in the checkpoint's class order")
    o.add_argument("--val", required=True, help="validation folder <label>/*: temperatures and conformal scores")
    o.add_argument("--out", required=True, help="the model folder to write, e.g. models/NAME")
    o.add_argument("--counts", default=None, help="COUNTS.txt: training images per class, one a line (default: "
                   "estimated from the estimator's Amount, with a warning)")
    o.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    o.add_argument("--stats", choices=["cifar", "imagenet", "inaturalist"], default=None,
                   help="normalisation statistics by name (default: the architecture's family)")
    o.add_argument("--mean", type=float, nargs=3, default=None)
    o.add_argument("--std", type=float, nargs=3, default=None)
    o.add_argument("--resize", type=int, default=None, help="shorter side resized to (default: 32 CIFAR, 256 ImageNet)")
    o.add_argument("--crop", type=int, default=None, help="centre crop (default: 32 CIFAR, 224 ImageNet)")
    o.add_argument("--alpha", type=float, default=1.0, help="the contrastive loss weight (official default 1.0)")
    o.add_argument("--server", default="target/release/proco-serve", help="the server binary whose eval fits on --val")
    o.add_argument("--force", action="store_true", help="replace a non-empty --out")

    a = ap.parse_args(argv)
    if a.cmd == "import-official":
        from .official import main as import_main
        return import_main(a)
    if a.cache is None:
        from .data import default_cache
        a.cache = default_cache(a.data)
    if a.cmd == "fit":
        from .fit import PAUSED, run
        status = run(a.method, a.data, a.out, cache=a.cache, max_images=a.max_images, seed=a.seed, threads=a.threads,
                     epochs=a.epochs, device=a.device, batch=a.batch, lr=a.lr, pipeline=a.pipeline, workers=a.workers,
                     amp=a.amp, ckpt_every=a.ckpt_every, resume=a.resume, max_seconds=a.max_seconds,
                     limit_batches=a.limit_batches, warmup_steps=a.warmup_steps, compile=a.compile,
                     dataset=a.dataset)
        sys.exit(PAUSED if status == "paused" else 0)
    elif a.cmd in ("all", "gpu-all"):
        run_all(a)
    elif a.cmd == "export":
        from .export import export_all
        export_all(a.runs, a.data, a.cache, a.model_dir, a.fixtures, a.fixtures_data, tuple(a.methods.split(",")))
    elif a.cmd == "folders":
        from .data import write_folders
        write_folders(a.data, a.cache, a.out, a.with_train)
    elif a.cmd == "report":
        from .report import write_report
        write_report(a.data, a.cache, a.model_dir)


def _fit_cmd(a, method, extra):
    cmd = [sys.executable, "-m", "train", "fit", "--method", method, "--data", a.data, "--cache", a.cache,
           "--out", a.out, "--epochs", str(a.epochs), "--device", a.device, "--pipeline", a.pipeline,
           "--ckpt-every", str(a.ckpt_every), "--threads", "1"]
    if not a.amp:
        cmd.append("--no-amp")
    for flag, v in (("--limit-batches", a.limit_batches), ("--max-images", a.max_images)):
        if v:
            cmd += [flag, str(v)]
    return cmd + extra


def run_all(a):
    """Decode once; time a short warm-up of every method running side by side; print the estimate; then run
    the full schedules side by side (resuming from checkpoints when rerun)."""
    from .data import load_cifar10
    t0 = time.time()
    methods = [m for m in a.methods.split(",") if m]
    os.makedirs(a.out, exist_ok=True)
    load_cifar10(a.data, a.cache)
    print(f"decoded CIFAR-10 in {time.time() - t0:.1f}s", flush=True)

    procs = {m: subprocess.Popen(_fit_cmd(a, m, ["--warmup-steps", str(a.warmup)]), stdout=subprocess.PIPE, text=True)
             for m in methods}
    per_step, steps = {}, {}
    for m, p in procs.items():
        out, _ = p.communicate()
        sys.stdout.write(out)
        hit = re.search(r"seconds_per_step=([0-9.e-]+) steps_per_epoch=([0-9]+)", out)
        if p.returncode or not hit:
            sys.exit(f"warm-up of {m} failed (exit {p.returncode})")
        per_step[m], steps[m] = float(hit.group(1)), int(hit.group(2))
    if a.limit_batches:
        steps = {m: min(s, a.limit_batches) for m, s in steps.items()}
    est = {m: per_step[m] * steps[m] * a.epochs for m in methods}
    done = {}
    for m in methods:
        ck = os.path.join(a.out, f"{m}.ckpt.pt")
        if a.resume and os.path.exists(ck):
            import torch
            done[m] = torch.load(ck, map_location="cpu", weights_only=False)["epoch"]
    left = {m: est[m] * (1 - done.get(m, 0) / a.epochs) for m in methods}
    print(f"warm-up took {time.time() - t0:.1f}s; estimate with all {len(methods)} runs side by side on {a.device}:", flush=True)
    for m in methods:
        print(f"  {m:6s} {per_step[m] * 1000:8.1f} ms/step x {steps[m]} steps x {a.epochs} epochs = {est[m]:8.0f} s"
              + (f" ({done[m]} epochs already done: {left[m]:.0f} s left)" if m in done else ""), flush=True)
    total = max(left.values())
    print(f"ESTIMATE: {total:.0f} s ({total / 60:.1f} min) for the slowest run, plus start-up", flush=True)
    extra = ["--resume"] if a.resume else []
    if a.max_seconds is not None:
        remaining = a.max_seconds - (time.time() - t0)
        if total > remaining:
            msg = (f"the estimate ({total:.0f} s) exceeds the remaining --max-seconds ({remaining:.0f} s): "
                   "the schedule will not be shortened")
            if not a.allow_pause:
                sys.exit(f"REFUSED: {msg}. Rerun with --allow-pause to train until the limit, checkpoint, and "
                         "resume with the same command, or give more time.")
            print(f"WARNING: {msg}; the runs will checkpoint and pause (exit 3); rerun with --resume to continue.", flush=True)
        # a margin for each run's own start-up (loading the cache) and its last checkpoint
        extra += ["--max-seconds", str(max(1.0, remaining - 20.0))]
    procs = [subprocess.Popen(_fit_cmd(a, m, extra)) for m in methods]
    codes = [p.wait() for p in procs]
    print(f"all runs finished in {time.time() - t0:.1f}s, exit codes {dict(zip(methods, codes))}", flush=True)
    if any(c not in (0, 3) for c in codes):
        sys.exit(1)
    sys.exit(3 if 3 in codes else 0)


if __name__ == "__main__":
    main()
