"""The vMF estimate a baseline model's prototypes are made of (train/serve_baseline.py)."""
import numpy as np

from train.serve_baseline import vmf_estimate
from train.vmf import kappa_official


def test_vmf_estimate_is_the_per_class_mean_resultant():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 8))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.repeat([0, 1, 2], 100)
    z[y == 1] += 2.0  # class 1 concentrated around the all-ones direction
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    mu, kappa, r, counts = vmf_estimate(z, y, 3)
    for c in range(3):
        mean = z[y == c].mean(0)
        assert np.allclose(r[c], np.linalg.norm(mean))
        assert np.allclose(mu[c], mean / np.linalg.norm(mean))
        assert np.isclose(kappa[c], kappa_official(8, r[c]))
    assert counts.tolist() == [100, 100, 100]
    assert kappa[1] > 5 * kappa[0], "the concentrated class has the larger kappa"
