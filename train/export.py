"""Export trained runs for serving: ONNX encoders, prototypes.json (temperatures fitted on the held-out
validation set), model.toml, training logs and the parity fixtures the Rust tests check against."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import torch

from . import data as D
from . import metrics as M
from . import onnx_io
from .model import ExportWrapper, ProCoResNet32
from .rules import RULES, balanced_logits
from .vmf import kappa_official

MODEL_NAME = "cifar10-lt-proco-resnet32"
VMF_RULES = ("proco", "vmf", "ensemble")
FIXTURES_PER_CLASS = 4

MODEL_TOML = """# Manifest of the served model: what the encoder expects and what it returns.
name = "{name}"
encoder = "encoder.onnx"
prototypes = "prototypes.json"

[input]
name = "image"          # float32 [N, 3, H, W]: RGB, pixels / 255 in [0, 1]; mean/std normalisation is inside the graph
height = 32
width = 32
color_order = "rgb"
resize = "shorter_side_then_center_crop"   # resize the shorter side to 32 px, then centre-crop 32 x 32
filter = "triangle"                         # bilinear

[outputs]
feature = "feature"      # [N, 128] unit-norm contrastive feature z
logits = "logits"        # [N, 10] linear head on the backbone feature
embedding = "embedding"  # [N, 64] backbone feature
"""


def load_model(ckpt_path: str) -> tuple[ExportWrapper, dict]:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = ProCoResNet32(classes=len(ckpt["counts"]), normed_fc=bool(ckpt.get("normed_fc", False)))
    model.load_state_dict(ckpt["model"])
    wrapper = ExportWrapper(model).eval()
    return wrapper, ckpt


def export_onnx(wrapper: ExportWrapper, path: str, size: int = 32):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dummy = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(wrapper, (dummy,), path, input_names=["image"], output_names=["feature", "logits", "embedding"],
                      dynamic_shapes={"image": {0: batch}}, external_data=False, dynamo=True, verbose=False)
    # Check what ONNX Runtime computes against PyTorch, at a batch size other than the traced one.
    x = torch.rand(5 if size <= 64 else 3, 3, size, size)
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(x)]
    got = onnx_io.session(path).run(None, {"image": x.numpy()})
    worst = max(float(np.abs(a - b).max() / (1 + np.abs(a).max())) for a, b in zip(ref, got))
    norms = np.linalg.norm(got[0], axis=1)
    assert worst < 1e-5 and np.abs(norms - 1).max() < 1e-5, (worst, norms)
    print(f"  {path}: ONNX Runtime vs PyTorch max relative diff {worst:.2e}, feature norms 1 +- {np.abs(norms - 1).max():.1e}")


def version_id(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "version"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def prototypes_from(ckpt: dict) -> dict:
    est = ckpt["estimator"]
    ave = est["ave"].double()
    r = ave.norm(dim=1)
    mu = torch.nn.functional.normalize(ave, dim=1)
    kappa = kappa_official(ave.shape[1], r)
    return {"mu": mu.numpy(), "kappa": kappa.numpy(), "r": r.numpy(), "counts": np.asarray(ckpt["counts"], float)}


def record_provenance(model_dir: str, runs: str, source: str, methods):
    """logs/provenance.json: which data and run folder each exported method came from (the report's 'training
    pixels'), for logs written before `fit` recorded its data in the start event."""
    path = os.path.join(model_dir, "logs", "provenance.json")
    prov = json.load(open(path)) if os.path.exists(path) else {}
    for method in methods:
        prov[method] = {"data": os.path.basename(os.path.normpath(source)), "runs": os.path.normpath(runs)}
    with open(path, "w") as fh:
        json.dump(prov, fh, indent=1, sort_keys=True)
        fh.write("\n")


def export_runs(runs: str, model_dir: str, source: str, methods) -> list[str]:
    """ONNX encoders and logs of the finished runs among `methods`: ProCo's as encoder.onnx, the baselines'
    as baselines/<method>.onnx. A run still going in the same folder (no <method>.pt yet) is left alone."""
    os.makedirs(os.path.join(model_dir, "logs"), exist_ok=True)
    done = [m for m in methods if os.path.exists(os.path.join(runs, f"{m}.pt"))]
    for m in done:
        out = "encoder.onnx" if m == "proco" else os.path.join("baselines", f"{m}.onnx")
        export_onnx(load_model(os.path.join(runs, f"{m}.pt"))[0], os.path.join(model_dir, out))
        shutil.copy(os.path.join(runs, f"{m}.log.jsonl"), os.path.join(model_dir, "logs", f"{m}.log.jsonl"))
    if "proco" in done and os.path.exists(os.path.join(runs, "console.log")):
        shutil.copy(os.path.join(runs, "console.log"), os.path.join(model_dir, "logs", "console.log"))
    record_provenance(model_dir, runs, source, done)
    return done


def export_all(runs: str, source: str, cache: str, model_dir: str, fixtures: str, fixtures_source: str | None = None,
               methods=("proco", "la", "ce", "ldam")):
    if "proco" not in methods:  # baselines only: the bundled ProCo model, its prototypes and fixtures stay
        print("  exported:", ", ".join(export_runs(runs, model_dir, source, methods)) or "nothing (no finished run)")
        return
    if not os.path.exists(os.path.join(runs, "proco.pt")):
        raise SystemExit(f"{runs}/proco.pt not found: the ProCo run has not finished")
    cifar = D.load_cifar10(source, cache)
    _, val_idx = D.long_tailed_split(cifar.train_y)
    val_x, val_y = cifar.train_x[val_idx], cifar.train_y[val_idx]
    export_runs(runs, model_dir, source, methods)
    wrapper, ckpt = load_model(os.path.join(runs, "proco.pt"))

    proto = prototypes_from(ckpt)
    tau, alpha = float(ckpt["tau"]), float(ckpt["alpha"])
    z, f, _ = onnx_io.encode(onnx_io.session(os.path.join(model_dir, "encoder.onnx")), val_x, label="validation")
    log_q_val = np.log(np.bincount(val_y, minlength=len(D.CLASSES)) / len(val_y))
    temps, val_acc = {}, {}
    for rule in RULES:
        g = balanced_logits(rule, z, f, proto["mu"], proto["kappa"], proto["counts"], tau, alpha)
        temps[rule] = M.fit_temperature(g, val_y, log_q_val)
        val_acc[rule] = float((g.argmax(1) == val_y).mean())
        print(f"  {rule:9s} validation top-1 {val_acc[rule]:.4f}  fitted T = {temps[rule]:.4g}")
    default_rule = max(VMF_RULES, key=lambda r: (val_acc[r], r == "proco"))

    doc = {
        "schema": "proco-prototypes", "schema_version": 1, "model": MODEL_NAME,
        "feature_dim": int(proto["mu"].shape[1]), "tau": tau, "alpha": alpha, "labels": D.CLASSES,
        "default_rule": default_rule, "temperatures": temps,
        "classes": [{"index": i, "label": D.CLASSES[i], "count": int(proto["counts"][i]), "kappa": float(proto["kappa"][i]),
                     "mean_resultant_length": float(proto["r"][i]), "mu": [float(v) for v in proto["mu"][i]]}
                    for i in range(len(D.CLASSES))],
    }
    doc["version"] = version_id(doc)
    with open(os.path.join(model_dir, "prototypes.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    with open(os.path.join(model_dir, "model.toml"), "w") as fh:
        fh.write(MODEL_TOML.format(name=MODEL_NAME))
    print(f"  prototypes version {doc['version']}, default rule {default_rule}")
    if fixtures_source and fixtures_source != source:
        cifar = D.load_cifar10(fixtures_source, D.default_cache(fixtures_source))
    write_fixtures(wrapper, doc, fixtures_source or source, cifar, fixtures)


def write_fixtures(wrapper: ExportWrapper, doc: dict, source: str, cifar: D.Cifar10, folder: str):
    """Test-set JPEGs with PyTorch's feature, logits, and every rule's balanced logits and posteriors."""
    os.makedirs(folder, exist_ok=True)
    wanted = {}
    for i, name in enumerate(cifar.test_names):
        cls, file = name.split("/")
        if sum(1 for k in wanted.values() if k[0] == cls) < FIXTURES_PER_CLASS:
            wanted[name] = (cls, i)
    blobs = {}
    for split, cls, file, blob in D._read_members(source):
        if split == "test" and f"{cls}/{file}" in wanted:
            blobs[f"{cls}/{file}"] = blob
        if len(blobs) == len(wanted):
            break
    mu = np.array([c["mu"] for c in doc["classes"]])
    kappa = np.array([c["kappa"] for c in doc["classes"]])
    counts = np.array([c["count"] for c in doc["classes"]], float)
    log_train = np.log(counts / counts.sum())
    log_uniform = np.full(len(counts), -np.log(len(counts)))
    images = []
    for name, (cls, idx) in sorted(wanted.items(), key=lambda kv: kv[1][1]):
        fname = f"{D.CLASSES.index(cls):02d}_{cls}_{name.split('/')[1]}"
        with open(os.path.join(folder, fname), "wb") as fh:
            fh.write(blobs[name])
        x = torch.from_numpy(onnx_io.to_input(cifar.test_x[idx:idx + 1]))
        with torch.no_grad():
            z, f, _ = (t.numpy() for t in wrapper(x))
        rec = {"file": fname, "label": int(cifar.test_y[idx]), "feature": z[0].tolist(), "logits": f[0].tolist(),
               "balanced_logits": {}, "posteriors": {}}
        for rule in RULES:
            g = balanced_logits(rule, z, f, mu, kappa, counts, doc["tau"], doc["alpha"])
            t = doc["temperatures"][rule]
            rec["balanced_logits"][rule] = g[0].tolist()
            rec["posteriors"][rule] = {"uniform": M.posterior(g, t, log_uniform)[0].tolist(),
                                       "train": M.posterior(g, t, log_train)[0].tolist()}
        images.append(rec)
    manifest = {"prototypes_version": doc["version"], "temperatures": doc["temperatures"],
                "note": "feature and logits: PyTorch float32 on the PIL-decoded JPEG; posteriors: float64 from those values",
                "images": images}
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    print(f"  {len(images)} parity fixtures in {folder}")
