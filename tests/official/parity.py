"""An imported official ProCo checkpoint, served, against the official model and a PyTorch reference.

Starts the real server on the imported model folder and posts every image of the set over HTTP (/v1/classify,
all classes, uniform prior) under each rule. Checks, per image:
- rule=linear gives the official model's top-1 class (argmax of its fc in eval mode, from reference.json,
  written by the official code's own model class: train/official_launch.py reference);
- every rule's posterior is within --tol (1e-5) of a PyTorch reference computed from the checkpoint (our loader,
  our network with its weights, the rules as train/rules.py defines them, the served temperatures);
- the served prototypes' mu and kappa equal what the official loss uses, to 1e-6 (reference.json).

    python3 tests/official/parity.py --ckpt CKPT --model MODEL_DIR --images DIR --reference reference.json \
        [--binary target/debug/proco-serve]
"""
import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from train import metrics as M  # noqa: E402
from train import official as O  # noqa: E402
from train.model import ExportWrapper  # noqa: E402
from train.rules import RULES, balanced_logits  # noqa: E402


def start(binary, model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCO_")}
    log = tempfile.NamedTemporaryFile(prefix="proco-official-", suffix=".log", delete=False)
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--grpc-listen", "off", "--model-dir", model_dir,
                             "--max-images-per-request", "64", "--log-level", "warn"], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 120
    base = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}); its log: {open(log.name).read()[-3000:]}")
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            line = ""
        if line.startswith("proco-serve listening on "):
            base = "http://" + line.split()[-1]
        if base:
            try:
                with urllib.request.urlopen(base + "/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return proc, base
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
    proc.kill()
    sys.exit("the server was not ready within 120 s")


def classify(base, path, rule, classes):
    req = urllib.request.Request(f"{base}/v1/classify?rule={rule}&prior=uniform&top_k={classes}",
                                 data=path.read_bytes(), method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.load(r)
    p = np.zeros(classes)
    for pred in body["predictions"]:
        p[pred["index"]] = pred["probability"]
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--binary", default=str(ROOT / "target" / "debug" / "proco-serve"))
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ref = json.loads(Path(a.reference).read_text())
    protos = json.loads((Path(a.model) / "prototypes.json").read_text())
    imported = json.loads((Path(a.model) / "import.json").read_text())
    mu = np.array([c["mu"] for c in protos["classes"]])
    kappa = np.array([c["kappa"] for c in protos["classes"]])
    counts = np.array([c["count"] for c in protos["classes"]], float)
    classes = len(kappa)
    failed, passed = [], 0

    def check(ok, what):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failed.append(what)
            print("FAILED:", what, flush=True)

    d_mu = np.abs(mu - np.array(ref["estimator_old"]["mu"])).max()
    d_kappa = np.abs(kappa / np.array(ref["estimator_old"]["kappa"]) - 1).max()
    print(f"prototypes: largest |mu - official| {d_mu:.2e}, largest relative kappa difference {d_kappa:.2e}")
    check(d_mu < 1e-6 and d_kappa < 1e-6, f"mu/kappa against the official loss: {d_mu:.2e}, {d_kappa:.2e}")

    # The PyTorch reference: the checkpoint through our loader and network, on the pixels as torchvision gives
    # them (the CIFAR family is 32 x 32 already; the ImageNet family is resized by the server, so its reference
    # input comes from the same resize, checked separately by scripts/preprocess_parity.py).
    wrapper = ExportWrapper(O.build_model(O.read_official(O.load_checkpoint(a.ckpt))), imported["mean"],
                            imported["std"]).eval()
    size = imported["input"]["crop"]
    log_uniform = np.full(classes, -np.log(classes))
    proc, base = start(a.binary, a.model)
    worst = {r: 0.0 for r in RULES}
    agree = 0
    try:
        images = ref["images"]
        for item in images:
            path = Path(a.images) / item["file"]
            img = Image.open(path).convert("RGB")
            if img.size != (size, size):
                from torchvision import transforms
                img = transforms.CenterCrop(size)(transforms.Resize(imported["input"]["resize_shorter"])(img))
            x = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1)[None] / np.float32(255))
            with torch.no_grad():
                z, f, _ = (t.numpy() for t in wrapper(x))
            served = {}
            for rule in RULES:
                served[rule] = classify(base, path, rule, classes)
                g = balanced_logits(rule, z, f, mu, kappa, counts, protos["tau"], protos["alpha"])
                want = M.posterior(g, protos["temperatures"][rule], log_uniform)[0]
                worst[rule] = max(worst[rule], float(np.abs(served[rule] - want).max()))
            same = int(served["linear"].argmax()) == int(item["argmax"])
            agree += same
            check(same, f"{item['file']}: rule=linear top-1 {served['linear'].argmax()}, official {item['argmax']}")
        for rule in RULES:
            check(worst[rule] <= a.tol, f"rule={rule}: largest posterior difference {worst[rule]:.2e} > {a.tol}")
    finally:
        proc.kill()
    print(f"{len(images)} images: rule=linear top-1 equals the official model's on {agree}; largest |served - "
          "PyTorch| posterior per rule: " + ", ".join(f"{r} {w:.2e}" for r, w in worst.items()))
    print(f"official parity: {passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
