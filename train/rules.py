"""The four inference rules, in float64, exactly as the server computes them (see README, "Inference rules")."""
from __future__ import annotations

import numpy as np

from . import vmf

RULES = ("linear", "proco", "vmf", "ensemble")


def balanced_logits(rule: str, z: np.ndarray, f: np.ndarray, mu: np.ndarray, kappa: np.ndarray,
                    counts: np.ndarray, tau: float, alpha: float) -> np.ndarray:
    """Balanced logits g [N, C]: posterior = softmax(g / T + ln q) for any target prior q."""
    z, f = z.astype(np.float64), f.astype(np.float64)
    if rule == "linear":
        return f
    if rule == "proco":
        return vmf.proco_logits(kappa, mu, z, tau)
    if rule == "vmf":
        # ln p(z|y) is prior-free already: softmax(g + ln q) is the posterior under q.
        return vmf.vmf_loglik(kappa, mu, z)
    if rule == "ensemble":
        return f + alpha * vmf.proco_logits(kappa, mu, z, tau)
    raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
