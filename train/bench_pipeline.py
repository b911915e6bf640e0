"""Augmentation throughput: images per second of each input pipeline on this machine, augmentation only
(no network), in one process, for ProCo's three views and for the classifier view alone.

    python -m train.bench_pipeline --data ../shared/data/cifar10-jpeg.tar.xz [--device cpu] [--old /tmp/old_augment.py]

`--old` takes a copy of a previous `train/augment.py` (e.g. `git show 4bf3fce:train/augment.py`) to time that
pipeline too: its per-image classifier view plus, for ProCo, its batched contrastive view on the same device.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np
import torch

from . import data as D
from .augment import ViewsDataset
from .gpu_augment import DeviceLoader


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def per_image(ds, n):
    t = time.time()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.time() - t)


def batch(x, y, views, dev, batch_size, steps):
    loader = DeviceLoader(x, y, batch_size, views, dev)
    it = iter(loader)
    next(it)  # allocation, first-call costs
    _sync(dev)
    t = time.time()
    done = 0
    while done < steps:
        for vs, _ in it:
            done += 1
            if done == steps:
                break
        it = iter(loader)
    _sync(dev)
    return steps * batch_size / (time.time() - t)


def old_pipeline(path, x, y, views, dev, n):
    spec = importlib.util.spec_from_file_location("train._old_augment", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    ds = mod.ViewsDataset(x, y, views)
    contrastive = mod.BatchContrastiveView(dev) if views == 3 else None
    t = time.time()
    for s in range(0, n, 256):
        items = [ds[i % len(ds)] for i in range(s, min(n, s + 256))]
        if contrastive:
            raw = torch.stack([it[0][1] for it in items]).to(dev).float() / 255.0
            contrastive(raw), contrastive(raw)
    _sync(dev)
    return n / (time.time() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default="data/cifar10_u8.npz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=2048, help="images per per-image measurement")
    ap.add_argument("--steps", type=int, default=8, help="batches of 256 per batched measurement")
    ap.add_argument("--old", default=None, help="a previous train/augment.py to time as well")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cifar = D.load_cifar10(a.data, a.cache)
    idx, _ = D.long_tailed_split(cifar.train_y)
    x, y = cifar.train_x[idx], cifar.train_y[idx]
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {len(y)} LT training images", flush=True)
    for views, name in ((1, "classifier view only (CE/LA/LDAM)"), (3, "ProCo's three views")):
        rows = []
        if a.old:
            rows.append(("old: previous train/augment.py", old_pipeline(a.old, x, y, views, dev, a.images)))
        rows.append(("per-image reference (official, PIL)", per_image(ViewsDataset(x, y, views), a.images)))
        rows.append((f"batched on {dev} (gpu_augment.py)", batch(x, y, views, dev, 256, a.steps)))
        for label, ips in rows:
            print(f"{name:36s} {label:40s} {ips:9.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
