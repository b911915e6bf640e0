"""One training run: ProCo, logit-adjusted CE (LA), plain CE or LDAM-DRW, under the official ProCo CIFAR recipe.

Recipe (official `ProCo_cifar/main.py`): SGD momentum 0.9, lr 0.3 at batch 256, weight decay 2e-4, the learning
rate set once per epoch: linear warm-up over the first 5 epochs (lr * (e + 1) / 5), x0.1 at epochs 160 and 180 of
200 (other lengths: 0.8 and 0.9 of the epochs, warm-up 5 * epochs // 200); `drop_last=True`.

Input pipelines: `batch` (default) keeps the uint8 training set on the device and augments whole batches there
(`gpu_augment.py`); `per-image` is the official per-image PIL pipeline in DataLoader workers (`augment.py`).

On CUDA, and on CPUs with native bfloat16 (AVX-512 BF16 or AMX), the encoder and the linear classifier run under
bfloat16 autocast unless `amp=False`; the projection head runs in float32 and the vMF terms in float64.

Checkpoints: `<out>/<method>.ckpt.pt` every `ckpt_every` epochs (model, optimiser, vMF estimators, epoch, every
RNG state); `resume=True` continues from it. `max_seconds` never shrinks the schedule: when the next epoch would
not fit, the run checkpoints, says so and returns "paused" (the CLI exits with status 3), to be resumed later.
"""
from __future__ import annotations

import json
import os
import platform
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .model import ProCoResNet32
from .vmf import ProCoLoss

METHODS = ("proco", "la", "ce", "ldam")
PAUSED = 3  # exit status of a run stopped by --max-seconds (checkpoint written)


def schedule(epochs: int) -> tuple[list[float], int]:
    """Milestones and warm-up epochs, as the official main.py."""
    if epochs == 200:
        return [160, 180], 5
    if epochs == 400:
        return [360, 380], 10
    return [epochs * 0.8, epochs * 0.9], 5 * epochs // 200


def lr_at(epoch: int, epochs: int, base_lr: float) -> float:
    """The official adjust_lr: the learning rate of a whole epoch."""
    milestones, warm = schedule(epochs)
    if epoch < warm:
        return base_lr / warm * (epoch + 1)
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


class LDAMLoss:
    """LDAM-DRW (Cao et al., NeurIPS 2019). Logits are s * cos (the cosine classifier, s = 30); the true class's
    logit loses s * m_y with m_y proportional to n_y^(-1/4), the largest margin 0.5. From `drw_epoch` on (80% of
    the schedule), class-balanced weights (1 - beta) / (1 - beta^n_y), beta = 0.9999, normalised to sum to C."""

    def __init__(self, counts, device, epochs: int, max_m: float = 0.5, s: float = 30.0, beta: float = 0.9999):
        n = np.asarray(counts, dtype=np.float64)
        m = n ** -0.25
        m = m * (max_m / m.max())
        self.margin = torch.tensor(m * s, dtype=torch.float32, device=device)
        w = (1.0 - beta) / (1.0 - np.power(beta, n))
        self.drw_weight = torch.tensor(w / w.sum() * len(n), dtype=torch.float32, device=device)
        self.drw_epoch = int(0.8 * epochs)  # 160 of 200, as LDAM-DRW's `epoch // 160`
        self.epoch = 0

    def __call__(self, logits, target):
        out = logits - F.one_hot(target, logits.shape[1]).to(logits.dtype) * self.margin[None, :]
        weight = self.drw_weight if self.epoch >= self.drw_epoch else None
        return F.cross_entropy(out, target, weight=weight)


def _rng_state(dev):
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if dev.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(dev)
    return st


def _set_rng_state(st, dev):
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if dev.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], dev)


def _loader(pipeline, x, y, batch, views, dev, workers):
    if pipeline == "batch":
        from .gpu_augment import DeviceLoader
        return DeviceLoader(x, y, batch, views, dev)
    if pipeline == "per-image":
        from .augment import ViewsDataset
        # Workers are re-created (and re-seeded from the main generator) every epoch so that a resumed run
        # draws the same augmentations as an uninterrupted one.
        return torch.utils.data.DataLoader(ViewsDataset(x, y, views), batch_size=batch, shuffle=True, drop_last=True,
                                           num_workers=workers, pin_memory=dev.type == "cuda", persistent_workers=False,
                                           prefetch_factor=4 if workers > 0 else None)
    raise ValueError(f"unknown pipeline {pipeline!r}")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 autocast is faster there (a ResNet-32 step 1.6-2x on AMX); on AVX2-only
    CPUs it is emulated and slower, so float32 stays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def train_arrays(method: str, x: np.ndarray, y: np.ndarray, out_dir: str, *, epochs: int = 200, device: str = "cpu",
                 batch: int = 256, lr: float = 0.3, pipeline: str = "batch", workers: int = 2, seed: int = 0,
                 tau: float = 0.1, alpha: float = 1.0, amp: bool = True, ckpt_every: int = 10, resume: bool = False,
                 max_seconds: float | None = None, limit_batches: int | None = None, warmup_steps: int | None = None,
                 classes: int = 10, extra_log: dict | None = None, compile: bool = False) -> str:
    """Train `method` on uint8 HWC images `x` with labels `y`. Returns "done", "paused" or (warm-up) the
    measured seconds per step as a string."""
    assert method in METHODS, method
    os.makedirs(out_dir, exist_ok=True)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ckpt_path = os.path.join(out_dir, f"{method}.ckpt.pt")
    config = {"method": method, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "tau": tau, "alpha": alpha,
              "pipeline": pipeline, "amp": amp, "limit_batches": limit_batches, "train_images": int(len(y))}
    if classes != 10:  # CIFAR-10 checkpoints written before this key existed resume as they are
        config["classes"] = classes
    t0 = time.time()
    state = None
    if resume and os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
        if diff:
            raise SystemExit(f"{ckpt_path} was written by a different run configuration (checkpoint, now): {diff}")
    elif resume:
        print(f"[{method}] --resume: no checkpoint at {ckpt_path}, starting from epoch 0", flush=True)
    if state is None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    log = None
    if warmup_steps is None:
        log = open(os.path.join(out_dir, f"{method}.log.jsonl"), "a" if state else "w")

    def emit(**rec):
        rec["t"] = round(time.time() - t0, 2)
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        print(f"[{method}] " + " ".join(f"{k}={v}" for k, v in rec.items()), flush=True)

    counts = np.maximum(np.bincount(y, minlength=classes), 1)
    views = 3 if method == "proco" else 1
    loader = _loader(pipeline, x, y, batch, views, dev, workers)
    model = ProCoResNet32(classes=classes, normed_fc=method == "ldam").to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    log_prior = torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32, device=dev))
    proco = ProCoLoss(classes, 128, tau, log_prior.double(), dev, seed) if method == "proco" else None
    ldam = LDAMLoss(counts, dev, epochs) if method == "ldam" else None
    use_amp = amp and (dev.type == "cuda" or (dev.type == "cpu" and cpu_has_native_bf16()))
    # torch.compile'd forward pass (the module itself, its state and checkpoints are unchanged).
    forward = torch.compile(model) if compile else model

    start_epoch, train_seconds = 0, 0.0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if proco:
            proco.load_state_dict(state["proco"])
        start_epoch, train_seconds = state["epoch"], state["train_seconds"]
        _set_rng_state(state["rng"], dev)
        emit(event="resume", epoch=start_epoch, epochs=epochs, checkpoint=os.path.basename(ckpt_path))
    elif log:
        emit(event="start", method=method, device=str(dev),
             device_name=(torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()),
             train_images=int(len(y)), counts=counts.tolist(), epochs=epochs, batch=batch, lr=lr, seed=seed,
             pipeline=pipeline, amp=use_amp, steps_per_epoch=len(loader), limit_batches=limit_batches,
             torch=torch.__version__, **(extra_log or {}))

    def save(epoch):
        ck = {"config": config, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
              "proco": proco.state_dict() if proco else None, "rng": _rng_state(dev), "train_seconds": train_seconds}
        tmp = ckpt_path + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)

    def step(vs, target):
        target = target.to(dev, non_blocking=True)
        imgs = torch.cat([v.to(dev, non_blocking=True) for v in vs]).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            h, logits = forward(imgs)
        h, logits = h.float(), logits.float()
        n = target.shape[0]
        ce_logits = logits[:n]
        if method == "ce":
            loss = F.cross_entropy(ce_logits, target)
        elif method == "ldam":
            loss = ldam(ce_logits, target)
        else:
            loss = F.cross_entropy(ce_logits + log_prior, target)
        if proco:
            z = model.project(h)  # float32; the head's batch norm sees all three views, as the official code
            loss = loss + alpha * proco([z[n:2 * n], z[2 * n:]], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), (ce_logits.argmax(1) == target).sum()

    if warmup_steps is not None:  # timed warm-up only: no checkpoint, no log file
        model.train()
        if proco:
            proco.start_epoch()
        done, t_start = 0, None
        while True:
            for vs, target in loader:
                if done == 3:  # the first steps pay for cudnn autotuning and allocation
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t_start = time.time()
                step(vs, target)
                done += 1
                if done == 3 + warmup_steps:
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    per = (time.time() - t_start) / warmup_steps
                    emit(event="warmup", seconds_per_step=round(per, 5), steps_per_epoch=len(loader),
                         estimate_seconds=round(per * len(loader) * epochs, 1), epochs=epochs)
                    return str(per)

    status = "done"
    epoch_times = []
    for epoch in range(start_epoch, epochs):
        if max_seconds is not None and epoch_times:
            per = float(np.mean(epoch_times[1:] or epoch_times))
            if time.time() - t0 + per > max_seconds:
                save(epoch)
                emit(event="paused", epoch=epoch, epochs=epochs, reason=f"the next epoch (~{per:.1f}s) would pass "
                     f"--max-seconds {max_seconds:.0f}", checkpoint=os.path.basename(ckpt_path),
                     resume="rerun the same command with --resume")
                status = "paused"
                break
        e0 = time.time()
        cur_lr = lr_at(epoch, epochs, lr)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        if ldam:
            ldam.epoch = epoch
        model.train()
        if proco:
            proco.start_epoch()
        tot = 0
        correct = torch.zeros((), device=dev, dtype=torch.long)
        loss_sum = torch.zeros((), device=dev)
        for it, (vs, target) in enumerate(loader):
            if limit_batches is not None and it >= limit_batches:
                break
            loss, corr = step(vs, target)
            n = target.shape[0]
            tot += n
            correct += corr  # stays on the device: no host sync per step
            loss_sum += loss * n
        dt = time.time() - e0
        train_seconds += dt
        epoch_times.append(dt)
        emit(event="epoch", epoch=epoch + 1, epochs=epochs, loss=round(loss_sum.item() / tot, 4),
             train_acc=round(correct.item() / tot, 4), lr=round(cur_lr, 5), images=tot, epoch_seconds=round(dt, 2))
        if (epoch + 1) % ckpt_every == 0 or epoch + 1 == epochs:
            save(epoch + 1)
    if status == "done":
        ckpt = {"method": method, "epochs": epochs, "model": model.state_dict(), "counts": counts.tolist(),
                "tau": tau, "alpha": alpha, "seed": seed, "train_seconds": train_seconds, "device": str(dev),
                "normed_fc": method == "ldam", "limit_batches": limit_batches,
                "estimator": proco.old.state_dict() if proco else None}
        path = os.path.join(out_dir, f"{method}.pt")
        torch.save(ckpt, path)
        emit(event="done", epochs=epochs, train_seconds=round(train_seconds, 1), checkpoint=os.path.basename(path))
    if log:
        log.close()
    return status


def run(method: str, data_source: str, out_dir: str, cache: str | None = None, max_images: int | None = None,
        seed: int = 0, threads: int | None = None, dataset: str = "cifar10", **kw) -> str:
    """Load CIFAR-10 or CIFAR-100, take the LT subset, train (see `train_arrays`)."""
    if threads:
        torch.set_num_threads(threads)
    spec = D.DATASETS[dataset]
    cifar = D.load_cifar10(data_source, cache, dataset=dataset)
    train_idx, _ = D.long_tailed_split(cifar.train_y, val_per_class=spec.val_per_class, n_max=spec.n_max)
    if max_images:  # smoke tests only: a random subset of the LT set
        train_idx = np.random.RandomState(seed).permutation(train_idx)[:max_images]
    return train_arrays(method, cifar.train_x[train_idx], cifar.train_y[train_idx], out_dir, seed=seed,
                        classes=len(spec.classes), extra_log={"data": os.path.basename(os.path.normpath(data_source)),
                                                              "dataset": dataset,
                                                              **({"max_images": max_images} if max_images else {})},
                        **kw)
