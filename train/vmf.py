"""Exact von Mises-Fisher math for ProCo training and export (float64, numpy or torch).

ProCo's official log-Bessel routine (a Miller recurrence started at 2*nu) is wrong for large kappa
(0.53 nats at p=128, kappa=1e4). Here ln I_nu(x) for nu >= 20 uses the uniform (Debye) asymptotic
expansion with 12 terms, accurate to ~1e-15 relative over x in [1e-8, 1e6]; it is written with
elementwise ops only, so the same code runs on numpy arrays and on torch tensors (and torch's autograd
differentiates it: d/dx [ln I_nu(x) - nu ln x] = I_{nu+1}(x)/I_nu(x), which the expansion reproduces).
ProCo's feature dimension p = 128 gives nu = 63, so the Debye branch is the only one training needs.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

K_TERMS = 12
NU_MIN = 20.0


def _debye_q_coefficients(kmax: int = K_TERMS) -> list[list[float]]:
    """Q_k(p^2) = U_k(p) / p^k from the DLMF 10.41.10 recurrence, ascending powers of p^2."""
    polys = [{0: Fraction(1)}]
    for _ in range(kmax):
        u, new = polys[-1], {}
        for j, c in u.items():
            if j:
                new[j + 1] = new.get(j + 1, 0) + c * j / 2
                new[j + 3] = new.get(j + 3, 0) - c * j / 2
            new[j + 1] = new.get(j + 1, 0) + c / (8 * (j + 1))
            new[j + 3] = new.get(j + 3, 0) - 5 * c / (8 * (j + 3))
        polys.append({j: c for j, c in new.items() if c != 0})
    out = []
    for k, u in enumerate(polys):
        deg = max(u) - k
        out.append([float(u.get(k + 2 * i, 0)) for i in range(deg // 2 + 1)])
    return out


DEBYE_Q = _debye_q_coefficients()


def _ops(x):
    return torch if isinstance(x, torch.Tensor) else np


def log_iv(nu: float, x):
    """ln I_nu(x) for nu >= 20 and x > 0 (elementwise over x)."""
    if nu < NU_MIN:
        raise ValueError("this training-side log I_nu covers nu >= 20 (feature dim >= 42)")
    xp = _ops(x)
    s = xp.sqrt(nu * nu + x * x)
    p2 = (nu / s) ** 2
    total, sk = 0.0, 1.0
    for k in range(1, K_TERMS + 1):
        sk = sk / s
        q = 0.0
        for c in reversed(DEBYE_Q[k]):
            q = q * p2 + c
        total = total + q * sk
    return s - nu * xp.arcsinh(nu / x) - 0.5 * xp.log(2.0 * math.pi * s) + xp.log1p(total)


def log_cp(p: int, kappa):
    """vMF log normaliser log C_p(kappa) = nu ln kappa - (p/2) ln 2 pi - ln I_nu(kappa)."""
    nu = p / 2 - 1
    xp = _ops(kappa)
    return nu * xp.log(kappa) - 0.5 * p * math.log(2 * math.pi) - log_iv(nu, kappa)


def kappa_official(p: int, r):
    """ProCo's concentration p R / (1 - R^2), capped at 1e5 as the official code does; a negative value (R
    rounded to just above 1, e.g. a class seen once) also becomes 1e5 there, as here."""
    xp = _ops(r)
    k = p * r / (1 - r * r)
    return xp.where(k < 0, 1e5, xp.clip(k, 0.0, 1e5))


def kappa_tilde(kappa, mu, z, tau: float):
    """||kappa_y mu_y + z_i / tau|| for every (i, y): [N, C]. One N x C matrix product."""
    cos = z @ mu.T
    xp = _ops(cos)
    sq = kappa[None, :] ** 2 + 2 * kappa[None, :] * cos / tau + 1.0 / tau**2
    return xp.sqrt(xp.clip(sq, 1e-300, None))


def proco_logits(kappa, mu, z, tau: float):
    """Expected contrastive logits log C_p(kappa_y) - log C_p(kappa~_iy)."""
    p = mu.shape[1]
    nu = p / 2 - 1
    kt = kappa_tilde(kappa, mu, z, tau)
    xp = _ops(kt)
    base = log_iv(nu, kappa) - nu * xp.log(kappa)
    return (log_iv(nu, kt) - nu * xp.log(kt)) - base[None, :]


def vmf_loglik(kappa, mu, z):
    """Class log-likelihood log C_p(kappa_y) + kappa_y mu_y . z (prior-free)."""
    return log_cp(mu.shape[1], kappa)[None, :] + kappa[None, :] * (z @ mu.T)


class EstimatorCV:
    """ProCo's per-class running mean of unit features (an exact running mean, as the official code).

    `ave[y]` is the mean of class y's features so far; its norm R gives kappa.
    """

    def __init__(self, classes: int, dim: int, device, generator: torch.Generator | None = None):
        ave = torch.randn(classes, dim, generator=generator, dtype=torch.float64).to(device)
        self.ave = torch.nn.functional.normalize(ave, dim=1) * 0.9
        self.amount = torch.zeros(classes, dtype=torch.float64, device=device)
        self.kappa = torch.full((classes,), dim * 0.9 / (1 - 0.81), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor):
        classes = self.ave.shape[0]
        onehot = torch.nn.functional.one_hot(labels, classes).to(torch.float64)
        n = onehot.sum(0)
        sums = onehot.T @ features.to(torch.float64)
        batch_mean = sums / n.clamp(min=1)[:, None]
        w = n / (n + self.amount)
        w = torch.nan_to_num(w, nan=0.0)
        self.ave = self.ave * (1 - w[:, None]) + batch_mean * w[:, None]
        self.amount += n

    @torch.no_grad()
    def update_kappa(self):
        r = self.ave.norm(dim=1)
        self.kappa = kappa_official(self.ave.shape[1], r)

    def mean_direction(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.ave, dim=1)

    def copy(self) -> "EstimatorCV":
        other = EstimatorCV.__new__(EstimatorCV)
        other.ave, other.amount, other.kappa = self.ave.clone(), self.amount.clone(), self.kappa.clone()
        return other

    def state_dict(self) -> dict:
        return {"ave": self.ave.cpu(), "amount": self.amount.cpu(), "kappa": self.kappa.cpu()}


class ProCoLoss:
    """Logit-adjusted CE on the closed-form expected contrastive logits (ProCo, Du et al. 2024).

    Mirrors the official `ProCoLoss`: the batch updates both estimators, kappa is refreshed on
    `old` only, and the logits use `old`'s distributions. `start_epoch` rolls `current` into `old`.
    """

    def __init__(self, classes: int, dim: int, tau: float, log_prior: torch.Tensor, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.current = EstimatorCV(classes, dim, device, g)
        self.old = self.current.copy()
        self.tau = tau
        self.log_prior = log_prior

    def start_epoch(self):
        self.old = self.current.copy()
        classes, dim = self.current.ave.shape
        g = torch.Generator().manual_seed(1)
        self.current = EstimatorCV(classes, dim, self.current.ave.device, g)

    def __call__(self, z_views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Mean over the views of the logit-adjusted CE on the expected contrastive logits. As the official
        training loop (one `criterion_scl` call per view), each view first updates both estimators and refreshes
        `old`'s kappa, then gets its logits: the second view sees the first one's update."""
        losses = []
        for z in z_views:
            feats = z.detach()
            self.old.update(feats, labels)
            self.current.update(feats, labels)
            self.old.update_kappa()
            mu, kappa = self.old.mean_direction(), self.old.kappa
            s = proco_logits(kappa, mu, z.to(torch.float64), self.tau)
            losses.append(torch.nn.functional.cross_entropy(s + self.log_prior, labels))
        return sum(losses) / len(losses)

    def state_dict(self) -> dict:
        return {"current": self.current.state_dict(), "old": self.old.state_dict()}

    def load_state_dict(self, state: dict):
        for name in ("current", "old"):
            est = getattr(self, name)
            dev = est.ave.device
            for k, v in state[name].items():
                setattr(est, k, v.to(dev))
