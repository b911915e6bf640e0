"""Posteriors, temperature fitting and calibration metrics (float64 numpy), as defined in the README.

ECE: 15 equal-width bins on the top-label confidence, bin 0 = [0, 1/15], bin m = (m/15, (m+1)/15].
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

MANY, FEW = 100, 20  # official split: many-shot > 100 training images, few-shot < 20


def log_softmax(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    s = a - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def posterior(g: np.ndarray, temperature: float, log_q: np.ndarray) -> np.ndarray:
    """softmax(g / T + ln q), row-wise."""
    return np.exp(log_softmax(g / temperature + log_q[None, :]))


def nll(g, temperature, log_q, labels) -> float:
    lp = log_softmax(g / temperature + log_q[None, :])
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(g: np.ndarray, labels: np.ndarray, log_q: np.ndarray) -> float:
    """T minimising held-out NLL (convex in 1/T; searched on ln T)."""
    res = minimize_scalar(lambda lt: nll(g, np.exp(lt), log_q, labels), bounds=(-6.0, 12.0), method="bounded",
                          options={"xatol": 1e-10})
    return float(np.exp(res.x))


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    acc = (pred == labels).astype(float)
    idx = _bin_index(conf, bins)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return float(total)


def classwise_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    k = probs.shape[1]
    total = 0.0
    for c in range(k):
        p, t = probs[:, c], (labels == c).astype(float)
        idx = _bin_index(p, bins)
        for b in range(bins):
            m = idx == b
            if m.any():
                total += m.mean() * abs(t[m].mean() - p[m].mean())
    return float(total / k)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15):
    conf, pred = probs.max(1), probs.argmax(1)
    acc = (pred == labels).astype(float)
    idx = _bin_index(conf, bins)
    return [(float(conf[idx == b].mean()), float(acc[idx == b].mean()), int((idx == b).sum()))
            for b in range(bins) if (idx == b).any()]


def evaluate(g: np.ndarray, temperature: float, log_q: np.ndarray, labels: np.ndarray, counts) -> dict:
    counts = np.asarray(counts)
    probs = posterior(g, temperature, log_q)
    pred = probs.argmax(1)
    correct = pred == labels
    top5 = np.argsort(-probs, axis=1)[:, :5]
    shot = counts[labels]
    onehot = np.eye(probs.shape[1])[labels]
    return {
        "n": int(len(labels)),
        "top1": float(correct.mean()),
        "top5": float((top5 == labels[:, None]).any(1).mean()),
        "many": float(correct[shot > MANY].mean()) if (shot > MANY).any() else float("nan"),
        "medium": float(correct[(shot <= MANY) & (shot >= FEW)].mean()) if ((shot <= MANY) & (shot >= FEW)).any() else float("nan"),
        "few": float(correct[shot < FEW].mean()) if (shot < FEW).any() else float("nan"),
        "ece": ece(probs, labels),
        "classwise_ece": classwise_ece(probs, labels),
        "nll": nll(g, temperature, log_q, labels),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }
