"""Import a checkpoint of the official ProCo code (LeapLabTHU/ProCo, `ckpt.pth.tar`) as a servable model folder.

`python -m train import-official CKPT --classes CLASSES.txt --val VAL_DIR --out models/NAME` writes the folder the
server loads: `encoder.onnx` (the channel normalisation inside the graph; outputs feature, logits, embedding;
ONNX Runtime checked against PyTorch), `prototypes.json` (mu and kappa as the official loss uses them, tau from
the checkpoint), `model.toml` (the official test preprocessing), then has the server's own `eval` fit the
temperatures and the conformal scores on VAL_DIR, and writes a parity manifest (`import.json`).

A checkpoint is a pickle, and a pickle can run code. It is read with torch's weights-only unpickler, which builds
tensors and plain containers only, plus what an official checkpoint holds beyond them: the pickled `ProCoLoss`
and its two `EstimatorCV`s, which become inert stand-ins here (their attributes, no methods of the official code),
and numpy's dtype and scalar. Any other global is refused before anything is unpickled, by name. The official
code itself is never imported.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from . import export as E
from .model import ExportWrapper, ProCoResNet32, ProCoResNet50
from .vmf import kappa_official


class Refused(Exception):
    """The checkpoint or the arguments cannot give a faithful model; the message says why."""


class _Inert:
    """The attributes of a pickled object of the official code, nothing else: no method of it ever runs."""

    def __setstate__(self, state):
        self.__dict__["state"] = state if isinstance(state, dict) else {"_state": state}

    def get(self, name):
        """An attribute, wherever nn.Module keeps it (plain attribute, buffer, parameter or submodule)."""
        st = self.__dict__.get("state", {})
        if name in st:
            return st[name]
        for where in ("_buffers", "_parameters", "_modules"):
            if name in (st.get(where) or {}):
                return st[where][name]
        return None


class ProCoLossState(_Inert):
    """Stands in for `loss.proco.ProCoLoss` (temperature, num_classes, feature_num, estimator_old, estimator)."""


class EstimatorState(_Inert):
    """Stands in for `loss.proco.EstimatorCV` (Ave, Amount, kappa, logc, class_num, feature_num)."""


def _numpy_globals():
    """numpy's dtype and scalar constructors, under the names numpy 1 and numpy 2 pickle them with."""
    out = [(np.dtype, "numpy.dtype")]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    out += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            out.append((getattr(np.dtypes, name), f"numpy.dtypes.{name}"))
    return out


SAFE_GLOBALS = [(ProCoLossState, "loss.proco.ProCoLoss"), (EstimatorState, "loss.proco.EstimatorCV"),
                *_numpy_globals()]
ALLOWED = {name for _, name in SAFE_GLOBALS}

FAMILIES = {
    # arch: (family, input size, shorter side resized to, mean, std, default tau)
    "resnet32": ("cifar", 32, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 0.1),
    "resnet50": ("imagenet", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.07),
    "resnext50": ("imagenet", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.07),
}
STATISTICS = {  # --stats NAME
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inaturalist": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
}


def load_checkpoint(path: str) -> dict:
    """The checkpoint's contents, read without running any code it might carry."""
    if not os.path.isfile(path):
        raise Refused(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as e:  # a damaged archive
            raise Refused(f"{path} is not a readable PyTorch checkpoint (truncated or damaged?): {e}") from None
        other = sorted(found - ALLOWED)
        if other:
            raise Refused(f"{path} references {', '.join(other)}: an official ProCo checkpoint holds only tensors, "
                          "the ProCoLoss state and numpy scalars, so it was not loaded (nothing in it ran)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler names a global it refused, or the file ends early
        raise Refused(f"{path} could not be read safely: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict):
        raise Refused(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dictionary")
    return ckpt


@dataclass
class Official:
    arch: str
    epoch: int
    state: dict  # the model's parameters, without `module.`
    ave: np.ndarray  # [C, D] estimator_old.Ave, float64 of the stored values
    amount: np.ndarray  # [C]
    tau: float
    classes: int
    normed_fc: bool


def read_official(ckpt: dict, path: str = "checkpoint") -> Official:
    """What the import needs, checked: the architecture, the weights and the vMF estimator the loss reads."""
    loss = ckpt.get("criterion_scl")
    if not isinstance(loss, ProCoLossState):
        raise Refused(f"{path} has no criterion_scl (the pickled ProCoLoss): not a ProCo checkpoint of the official "
                      f"code (keys: {', '.join(sorted(map(str, ckpt)))})")
    if "state_dict" not in ckpt:
        raise Refused(f"{path} has no state_dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    arch = ckpt.get("arch")
    if arch is None:  # older checkpoints: the shapes say which family
        arch = "resnet32" if "encoder.layer3.4.conv2.weight" in state and "encoder.layer4.0.conv1.weight" not in state \
            else None
    if arch not in FAMILIES:
        raise Refused(f"{path}: architecture {arch!r} is not supported (resnet32, resnet50, resnext50)")
    if arch != "resnet32":
        groups = state["encoder.layer1.0.conv2.weight"].shape[1] != state["encoder.layer1.0.conv2.weight"].shape[0]
        if groups != (arch == "resnext50"):
            raise Refused(f"{path}: arch says {arch}, but the grouped convolutions say otherwise")
    old = loss.get("estimator_old")
    if not isinstance(old, EstimatorState):
        raise Refused(f"{path}: criterion_scl has no estimator_old")
    ave, amount = old.get("Ave"), old.get("Amount")
    if not isinstance(ave, torch.Tensor) or ave.dim() != 2:
        raise Refused(f"{path}: estimator_old.Ave is missing or not a [C, D] tensor")
    ave = ave.double().numpy()
    norms = np.linalg.norm(ave, axis=1)
    bad = np.where(~np.isfinite(ave).all(axis=1) | (norms == 0))[0]
    if len(bad):
        raise Refused(f"{path}: estimator_old.Ave has NaN or zero rows (classes {bad[:10].tolist()}"
                      f"{'...' if len(bad) > 10 else ''}): mu is undefined there")
    fc = state.get("fc.weight")
    if fc is None:
        raise Refused(f"{path}: the state_dict has no fc.weight")
    normed = "fc.bias" not in state
    classes = fc.shape[1] if normed else fc.shape[0]
    head_out = state["head.3.weight"].shape[0]
    if ave.shape != (classes, head_out):
        raise Refused(f"{path}: estimator_old.Ave is {list(ave.shape)} but the model has {classes} classes and a "
                      f"{head_out}-d head")
    num = loss.get("num_classes")
    if num is not None and int(num) != classes:
        raise Refused(f"{path}: criterion_scl.num_classes {num} against {classes} classes in fc")
    tau = loss.get("temperature")
    return Official(arch=arch, epoch=int(ckpt.get("epoch", 0)), state=state, ave=ave,
                    amount=np.asarray(amount.double().numpy() if isinstance(amount, torch.Tensor) else amount, float),
                    tau=float(tau if tau is not None else FAMILIES[arch][5]), classes=int(classes), normed_fc=normed)


def build_model(off: Official) -> torch.nn.Module:
    """Our network with the official weights: the ImageNet models share the official parameter names; ResNet-32's
    blocks are `encoder.layerK.B` there and `layers.(5 (K - 1) + B)` here."""
    if off.arch == "resnet32":
        model = ProCoResNet32(classes=off.classes, feat_dim=off.ave.shape[1], normed_fc=off.normed_fc)
        state = {}
        for k, v in off.state.items():
            if k.startswith("encoder.layer"):
                layer, block, rest = k[len("encoder.layer"):].split(".", 2)
                k = f"layers.{5 * (int(layer) - 1) + int(block)}.{rest}"
            elif k.startswith("encoder."):
                k = k[len("encoder."):]
            state[k] = v
    else:
        model = ProCoResNet50(classes=off.classes, arch=off.arch, feat_dim=off.ave.shape[1], normed_fc=off.normed_fc)
        state = off.state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise Refused(f"the checkpoint's weights do not fit {off.arch}: {str(e).splitlines()[0]}") from None
    return model.eval()


def vmf_from(off: Official) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mu = Ave / |Ave| and kappa = p R / (1 - R^2), R = |Ave| (capped as the official update_kappa), in float64."""
    r = np.linalg.norm(off.ave, axis=1)
    return off.ave / r[:, None], kappa_official(off.ave.shape[1], r), r


def counts_from(off: Official, counts_file: str | None) -> tuple[np.ndarray, str]:
    if counts_file:
        counts = np.array([float(x) for x in open(counts_file).read().split()], float)
        if len(counts) != off.classes or (counts <= 0).any():
            raise Refused(f"{counts_file}: {len(counts)} counts, {off.classes} expected, each positive")
        return counts, f"--counts {os.path.basename(counts_file)}"
    # Each step adds both contrastive views to Amount; estimator_old also holds the previous epoch's sums from the
    # second epoch on (the official _hook_before_epoch hands them over), and drop_last leaves some images out.
    epochs_held = 1 if off.epoch <= 1 else 2
    counts = np.maximum(np.rint(off.amount / (2 * epochs_held)), 1)
    print(f"WARNING: no --counts: the training images per class are estimated as estimator_old.Amount / "
          f"{2 * epochs_held} (two views, {epochs_held} epoch(s) of sums; drop_last makes it a slight undercount). "
          "The training prior follows from these counts: give the real ones with --counts COUNTS.txt.", flush=True)
    return counts, f"estimator_old.Amount / {2 * epochs_held}"


MODEL_TOML = """# Manifest of a model imported from the official ProCo code (python -m train import-official).
name = "{name}"
encoder = "encoder.onnx"
prototypes = "prototypes.json"

[input]
name = "image"          # float32 [N, 3, H, W]: RGB, pixels / 255 in [0, 1]; mean/std normalisation is inside the graph
height = {size}
width = {size}
color_order = "rgb"
resize = "shorter_side_then_center_crop"   # resize the shorter side to {resize} px, then centre-crop {size} x {size}
resize_shorter = {resize}
filter = "triangle"                         # bilinear, antialiased when it shrinks (PIL's)

[outputs]
feature = "feature"      # [N, {dim}] unit-norm contrastive feature z
logits = "logits"        # [N, {classes}] the official classifier fc on the backbone feature
embedding = "embedding"  # [N, {hdim}] backbone feature
"""


def import_official(ckpt_path: str, classes_file: str, val_dir: str, out: str, counts_file: str | None = None,
                    name: str | None = None, mean=None, std=None, stats: str | None = None, resize: int | None = None,
                    crop: int | None = None, alpha: float = 1.0, server: str = "target/release/proco-serve",
                    force: bool = False) -> dict:
    """Write the model folder `out`; on any refusal nothing is left there."""
    if os.path.exists(out) and os.listdir(out) and not force:
        raise Refused(f"{out} exists and is not empty (--force replaces it)")
    if not os.path.isdir(val_dir):
        raise Refused(f"--val {val_dir}: not a folder of <label>/ image folders")
    off = read_official(load_checkpoint(ckpt_path), ckpt_path)
    labels = [line.strip() for line in open(classes_file) if line.strip()]
    if len(labels) != off.classes:
        raise Refused(f"{classes_file} names {len(labels)} classes; the checkpoint has {off.classes}")
    if len(set(labels)) != len(labels):
        raise Refused(f"{classes_file} names a class twice")
    if not (os.path.isfile(server) and os.access(server, os.X_OK)):
        raise Refused(f"the server binary {server} is needed to fit temperatures and conformal scores with its own "
                      "preprocessing: build it (cargo build --release) or give --server")
    family, size, shorter, fmean, fstd = FAMILIES[off.arch][:5]
    if stats:
        fmean, fstd = STATISTICS[stats]
    mean, std = tuple(mean or fmean), tuple(std or fstd)
    size, shorter = crop or size, resize or shorter
    counts, counts_from_what = counts_from(off, counts_file)
    mu, kappa, r = vmf_from(off)
    model = build_model(off)
    wrapper = ExportWrapper(model, mean, std).eval()
    name = name or os.path.basename(os.path.normpath(out))

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".import-", dir=parent)  # renamed into place only when complete
    try:
        print(f"importing {ckpt_path}: {off.arch}, epoch {off.epoch}, {off.classes} classes, z {mu.shape[1]}-d, "
              f"tau {off.tau}", flush=True)
        E.export_onnx(wrapper, os.path.join(work, "encoder.onnx"), size=size)
        doc = {
            "schema": "proco-prototypes", "schema_version": 1, "model": name, "feature_dim": int(mu.shape[1]),
            "tau": off.tau, "alpha": alpha, "labels": labels, "default_rule": "ensemble",
            "temperatures": {"linear": 1.0, "proco": 1.0, "vmf": 1.0, "ensemble": 1.0},
            "classes": [{"index": i, "label": labels[i], "count": int(counts[i]), "kappa": float(kappa[i]),
                         "mean_resultant_length": float(r[i]), "mu": [float(v) for v in mu[i]]}
                        for i in range(off.classes)],
        }
        doc["version"] = E.version_id(doc)
        with open(os.path.join(work, "prototypes.json"), "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        with open(os.path.join(work, "model.toml"), "w") as fh:
            fh.write(MODEL_TOML.format(name=name, size=size, resize=shorter, dim=mu.shape[1], classes=off.classes,
                                       hdim=off.state["head.0.weight"].shape[1]))
        print("fitting temperatures and conformal scores on the validation folder with the server's eval", flush=True)
        fit = subprocess.run([server, "eval", "--model-dir", work, "--fit-temperatures", val_dir, "--fit-conformal",
                              val_dir, "--write-prototypes", os.path.join(work, "prototypes.json"), "--prior",
                              "uniform"], capture_output=True, text=True)
        with open(os.path.join(work, "import-fit.log"), "w") as fh:
            fh.write(fit.stdout + fit.stderr)
        if fit.returncode:
            raise Refused(f"the server's eval could not fit on {val_dir} (exit {fit.returncode}):\n"
                          + (fit.stderr or fit.stdout)[-2000:])
        served = json.load(open(os.path.join(work, "prototypes.json")))
        manifest = {
            "source": os.path.basename(ckpt_path), "arch": off.arch, "epoch": off.epoch, "classes": off.classes,
            "feature_dim": int(mu.shape[1]), "tau": off.tau, "alpha": alpha, "normed_fc": off.normed_fc,
            "mean": list(mean), "std": list(std), "input": {"resize_shorter": shorter, "crop": size},
            "counts_from": counts_from_what, "prototypes_version": served["version"],
            "temperatures": served["temperatures"],
        }
        with open(os.path.join(work, "import.json"), "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.write("\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"wrote {out}: prototypes version {manifest['prototypes_version']}, temperatures "
          + ", ".join(f"{k} {v:.4g}" for k, v in manifest["temperatures"].items()), flush=True)
    return manifest


def main(a) -> None:
    try:
        import_official(a.ckpt, a.classes, a.val, a.out, counts_file=a.counts, name=a.name, mean=a.mean, std=a.std,
                        stats=a.stats, resize=a.resize, crop=a.crop, alpha=a.alpha, server=a.server, force=a.force)
    except Refused as e:
        print(f"import-official refused: {e}", file=sys.stderr)
        sys.exit(2)
