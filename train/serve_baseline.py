"""Make a baseline encoder a servable model of the repository: `models/cifar10-lt-<method>/`.

The baselines (LA, CE, LDAM-DRW) are exported as ONNX encoders beside the ProCo model
(`models/cifar10-lt/baselines/<method>.onnx`) with the same outputs, so the server can serve them
side by side with ProCo for an A/B comparison on the same traffic. A model folder needs a manifest
and prototypes; this writes both:

* `model.toml`: the ProCo manifest with the model's own name, its encoder the baseline's file;
* `prototypes.json`: per class, the vMF estimate of the baseline's unit features z over the
  long-tailed training set (the mean resultant vector, kappa by the official estimator), the
  bundled model's tau and alpha, and every rule's temperature fitted on the validation split, as
  `train export` does for ProCo. A baseline's loss reads only its classifier, so its projection
  head keeps its initial weights: the vMF rules read a fixed random projection of the baseline's
  backbone features. The rule that is the baseline itself is `linear` (its trained classifier),
  the default rule of its prototypes.

    python -m train.serve_baseline --method la --data ../shared/data/cifar10-jpeg.tar.xz

The encoder is not copied (the manifest points at it), so the repository holds it once.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from . import data as D
from . import metrics as M
from . import onnx_io
from .export import version_id
from .rules import RULES, balanced_logits
from .vmf import kappa_official

BASE_MODEL_DIR = "models/cifar10-lt"


def vmf_estimate(z: np.ndarray, y: np.ndarray, classes: int):
    """Per class: mean resultant vector of the unit features -> (mu, kappa, r, counts)."""
    p = z.shape[1]
    ave = np.stack([z[y == c].astype(np.float64).mean(0) for c in range(classes)])
    r = np.linalg.norm(ave, axis=1)
    mu = ave / r[:, None]
    kappa = np.asarray(kappa_official(p, r))
    return mu, kappa, r, np.bincount(y, minlength=classes).astype(float)


def write_model(method: str, source: str, cache: str, repository: str = "models") -> str:
    name = f"cifar10-lt-{method}"
    out = os.path.join(repository, name)
    encoder = os.path.join(BASE_MODEL_DIR, "baselines", f"{method}.onnx")
    if not os.path.exists(encoder):
        raise SystemExit(f"no encoder at {encoder}: export the {method} run first (python -m train export)")
    base = json.load(open(os.path.join(BASE_MODEL_DIR, "prototypes.json")))
    tau, alpha = float(base["tau"]), float(base["alpha"])
    cifar = D.load_cifar10(source, cache)
    train_idx, val_idx = D.long_tailed_split(cifar.train_y)
    sess = onnx_io.session(encoder)
    z, _, _ = onnx_io.encode(sess, cifar.train_x[train_idx], label=f"{method} training set")
    y = cifar.train_y[train_idx]
    mu, kappa, r, counts = vmf_estimate(z, y, len(D.CLASSES))
    z_val, f_val, _ = onnx_io.encode(sess, cifar.train_x[val_idx], label=f"{method} validation")
    y_val = cifar.train_y[val_idx]
    log_q_val = np.log(np.bincount(y_val, minlength=len(D.CLASSES)) / len(y_val))
    temps = {}
    for rule in RULES:
        g = balanced_logits(rule, z_val, f_val, mu, kappa, counts, tau, alpha)
        temps[rule] = M.fit_temperature(g, y_val, log_q_val)
        print(f"  {rule:9s} validation top-1 {float((g.argmax(1) == y_val).mean()):.4f}  fitted T = {temps[rule]:.4g}")
    doc = {
        "schema": "proco-prototypes", "schema_version": 1, "model": name,
        "feature_dim": int(mu.shape[1]), "tau": tau, "alpha": alpha, "labels": D.CLASSES,
        "default_rule": "linear", "temperatures": temps,
        "classes": [{"index": i, "label": D.CLASSES[i], "count": int(counts[i]), "kappa": float(kappa[i]),
                     "mean_resultant_length": float(r[i]), "mu": [float(v) for v in mu[i]]}
                    for i in range(len(D.CLASSES))],
    }
    doc["version"] = version_id(doc)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "prototypes.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    manifest = open(os.path.join(BASE_MODEL_DIR, "model.toml")).read()
    manifest = manifest.replace('name = "cifar10-lt-proco-resnet32"', f'name = "{name}"', 1)
    manifest = manifest.replace('encoder = "encoder.onnx"', f'encoder = "../cifar10-lt/baselines/{method}.onnx"', 1)
    manifest = manifest.split("\n# Other graphs of the same encoder")[0].rstrip() + "\n"
    header = (f"# The {method.upper()} baseline, served beside ProCo for A/B comparisons (train/serve_baseline.py).\n"
              "# Its trained classifier is the `linear` rule, the default in its prototypes.json.\n")
    with open(os.path.join(out, "model.toml"), "w") as fh:
        fh.write(header + manifest.split("\n", 1)[1])
    print(f"wrote {out}: prototypes version {doc['version']}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m train.serve_baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True, choices=["la", "ce", "ldam"])
    ap.add_argument("--data", required=True, help="the CIFAR-10 archive the baseline was trained on")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--repository", default="models")
    a = ap.parse_args(argv)
    write_model(a.method, a.data, a.cache or D.default_cache(a.data), a.repository)


if __name__ == "__main__":
    main()
