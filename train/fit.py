"""One training run: ProCo, logit-adjusted CE (LA) or plain CE, under the same recipe.

On CUDA the network runs under bfloat16 autocast (the vMF terms stay float64).

Recipe (official ProCo CIFAR): SGD momentum 0.9, lr 0.3 at batch 256, weight decay 2e-4, linear warm-up
for 5 epochs, x0.1 at epochs 160 and 180 of 200. A shorter run compresses the schedule proportionally.
With `time_budget`, epochs 2 and 3 are timed and, if the run cannot finish in time, the epoch count
is reduced once (schedule compressed the same way) and the log says so: the run never silently stops early.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .augment import BatchContrastiveView, ViewsDataset
from .model import ProCoResNet32
from .vmf import ProCoLoss

METHODS = ("proco", "la", "ce")


def lr_at(epoch_float: float, epochs: int, base_lr: float) -> float:
    warm = max(1.0, 5 * epochs / 200)
    if epoch_float < warm:
        return base_lr * (epoch_float + 1e-3) / warm
    return base_lr * (0.1 ** (int(epoch_float >= 0.8 * epochs) + int(epoch_float >= 0.9 * epochs)))


def run(method: str, data_source: str, out_dir: str, epochs: int = 200, device: str = "cpu", batch: int = 256,
        lr: float = 0.3, workers: int = 2, time_budget: float | None = None, cache: str | None = None,
        seed: int = 0, tau: float = 0.1, alpha: float = 1.0, threads: int | None = None,
        max_images: int | None = None) -> str:
    assert method in METHODS
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log_path = os.path.join(out_dir, f"{method}.log.jsonl")
    log = open(log_path, "w")

    def emit(**rec):
        rec["t"] = round(time.time() - t0, 2)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(f"[{method}] " + " ".join(f"{k}={v}" for k, v in rec.items()), flush=True)

    t0 = time.time()
    cifar = D.load_cifar10(data_source, cache)
    train_idx, _ = D.long_tailed_split(cifar.train_y)
    if max_images:  # smoke tests only: a random subset of the LT set
        train_idx = np.random.RandomState(seed).permutation(train_idx)[:max_images]
    x, y = cifar.train_x[train_idx], cifar.train_y[train_idx]
    counts = np.maximum(np.bincount(y, minlength=len(D.CLASSES)), 1)
    emit(event="start", method=method, device=str(dev), device_name=(torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()),
         train_images=int(len(y)), counts=counts.tolist(), epochs=epochs, batch=batch, lr=lr, seed=seed, torch=torch.__version__)

    views = 3 if method == "proco" else 1
    ds = ViewsDataset(x, y, views)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=False, num_workers=workers,
                                         pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers > 0 else None)
    model = ProCoResNet32(classes=len(D.CLASSES)).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    log_prior = torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32, device=dev))
    proco = ProCoLoss(len(D.CLASSES), 128, tau, log_prior.double(), dev, seed) if method == "proco" else None
    contrastive = BatchContrastiveView(dev)

    steps = len(loader)
    epoch = 0
    train_start = time.time()
    while epoch < epochs:
        model.train()
        if proco:
            proco.start_epoch()
        tot, e0 = 0, time.time()
        correct = torch.zeros((), device=dev)
        loss_sum = torch.zeros((), device=dev)
        for it, (vs, target) in enumerate(loader):
            cur_lr = lr_at(epoch + it / steps, epochs, lr)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            target = target.to(dev, non_blocking=True)
            if proco:
                raw = vs[1].to(dev, non_blocking=True).float() / 255.0
                vs = [vs[0].to(dev, non_blocking=True), contrastive(raw), contrastive(raw)]
            imgs = torch.cat([v.to(dev, non_blocking=True) for v in vs]).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                h, logits = model(imgs)
            h, logits = h.float(), logits.float()
            n = target.shape[0]
            ce_logits = logits[:n]
            if method == "ce":
                loss = F.cross_entropy(ce_logits, target)
            else:
                loss = F.cross_entropy(ce_logits + log_prior, target)
            if proco:
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    z = model.project(h[n:])
                z = z.float()
                loss = loss + alpha * proco([z[:n], z[n:]], target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += n
            correct += (ce_logits.argmax(1) == target).sum()  # stays on the device: no sync per step
            loss_sum += loss.detach() * n
        epoch += 1
        dt = time.time() - e0
        emit(event="epoch", epoch=epoch, epochs=epochs, loss=round(loss_sum.item() / tot, 4), train_acc=round(correct.item() / tot, 4),
             lr=round(cur_lr, 5), epoch_seconds=round(dt, 2))
        if epoch == 1:
            second_epoch_start = time.time()
        if time_budget and epoch == 3:
            per_epoch = (time.time() - second_epoch_start) / 2  # epochs 2-3: epoch 1 pays one-off start-up costs
            fits = int((time_budget - (time.time() - t0)) / per_epoch) + 3
            if fits < epochs:
                emit(event="rescale", reason=f"{epochs} epochs need ~{per_epoch * epochs:.0f}s, budget {time_budget:.0f}s",
                     old_epochs=epochs, new_epochs=fits)
                epochs = fits
    wall = time.time() - train_start
    ckpt = {"method": method, "epochs": epochs, "model": model.state_dict(), "counts": counts.tolist(),
            "tau": tau, "alpha": alpha, "seed": seed, "train_seconds": wall, "device": str(dev),
            "estimator": proco.old.state_dict() if proco else None}
    path = os.path.join(out_dir, f"{method}.pt")
    torch.save(ckpt, path)
    emit(event="done", epochs=epochs, train_seconds=round(wall, 1), checkpoint=os.path.basename(path))
    log.close()
    return path
