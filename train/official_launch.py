"""Run the official ProCo code (github.com/LeapLabTHU/ProCo, commit af9e78e) unmodified on a CPU-only machine,
to get genuine official checkpoints and reference outputs for the importer (`train/official.py`) to be tested on.

The official code assumes NCCL and CUDA. Rather than edit it (or copy it here), this launcher imports it from the
checkout given with --repo and patches, at run time, only what a CPU lacks (see `_patch_for_cpu`); every line of
training, checkpointing and model code that runs is the authors'. No bytecode is written into their tree.

    python train/official_launch.py pickles --png ../shared/data/cifar10-png.tar.xz --out DIR
        torchvision's CIFAR-10 pickles (DIR/cifar-10-batches-py) rebuilt from the lossless PNG copy. Row order
        is NOT the original pickle order: class-major (airplane .. truck), file-name order within a class, so
        the official code's seeded per-class draw of the long-tailed subset picks other images than upstream.
    python train/official_launch.py images --png ARCHIVE --out DIR --per-class 20
        the first N test PNGs by file name of each class, copied byte for byte to DIR/<class>/NNNN.png.
    python train/official_launch.py cifar --repo R --data DIR --out OUT -- <ProCo_cifar/main.py args>
        ProCo_cifar/main.py in-process; it writes OUT/<mark>/ckpt.pth.tar (and ckpt.best.pth.tar).
    python train/official_launch.py imagenet --repo R --png ARCHIVE --list-dir D --out OUT -- <ProCo/main.py args>
        ProCo/main.py in-process on a made-up ImageNet-LT: CIFAR-10 training PNGs in D/train/, lists in
        D/dataset/ImageNet_LT/ (the paths main.py hard-codes, relative to its working directory, here D).
    python train/official_launch.py reference --repo R --ckpt C --images DIR --out ref.json [--family imagenet]
        the checkpoint in the official model class (eval mode, official test transform): per image the fc logits,
        argmax, backbone feature h, unit projection z and the official ProCo contrast logits; estimator_old's mu,
        kappa, logc, amount and tau. It loads with torch.load(weights_only=False), i.e. it unpickles and runs the
        official classes by design: this is a developer tool, not the server's import path (that one refuses
        anything but the few globals an official checkpoint holds).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import pickle
import runpy
import socket
import sys
import tarfile
import types

sys.dont_write_bytecode = True  # keep the official checkout pristine (no __pycache__ in it)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _archive_pngs(png: str, split: str) -> dict[str, dict[str, bytes]]:
    """{class: {file name: PNG bytes}} of one split of the archive (layout <split>/<class>/NNNN.png)."""
    out: dict[str, dict[str, bytes]] = {c: {} for c in CLASSES}
    with tarfile.open(png, "r:xz") as tf:
        for m in tf:
            parts = m.name.lstrip("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == split and parts[2].endswith(".png"):
                out[parts[1]][parts[2]] = tf.extractfile(m).read()
    return out


def _first(files: dict[str, bytes], n: int | None) -> list[str]:
    return sorted(files)[:n] if n else sorted(files)


def cmd_pickles(a) -> None:
    base = os.path.join(a.out, "cifar-10-batches-py")
    os.makedirs(base, exist_ok=True)
    for split in ("train", "test"):
        pngs = _archive_pngs(a.png, split)
        data, labels, names = [], [], []
        for label, cls in enumerate(CLASSES):  # class-major, file-name order (not the upstream pickle order)
            for name in _first(pngs[cls], a.limit):
                with Image.open(io.BytesIO(pngs[cls][name])) as im:
                    hwc = np.asarray(im.convert("RGB"), dtype=np.uint8)
                data.append(hwc.transpose(2, 0, 1).reshape(-1))  # torchvision wants channel-major rows of 3072
                labels.append(label)
                names.append(f"{cls}/{name}")
        data = np.stack(data)
        chunks = [("test_batch", "testing batch 1 of 1", slice(None))] if split == "test" else [
            (f"data_batch_{i + 1}", f"training batch {i + 1} of 5", slice(i * len(data) // 5, (i + 1) * len(data) // 5))
            for i in range(5)]
        for fname, label_txt, sl in chunks:
            entry = {"batch_label": label_txt, "labels": labels[sl], "data": data[sl], "filenames": names[sl]}
            with open(os.path.join(base, fname), "wb") as f:
                pickle.dump(entry, f, protocol=4)
        print(f"{split}: {len(data)} images")
    with open(os.path.join(base, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072}, f, protocol=4)


def cmd_images(a) -> None:
    pngs = _archive_pngs(a.png, a.split)
    for cls in CLASSES:
        os.makedirs(os.path.join(a.out, cls), exist_ok=True)
        for name in _first(pngs[cls], a.per_class):
            with open(os.path.join(a.out, cls, name), "wb") as f:
                f.write(pngs[cls][name])  # the original bytes, not a re-encoding
    print(f"{len(CLASSES) * a.per_class} images under {a.out}")


def _patch_for_cpu() -> None:
    """The smallest run-time changes that let the official GPU/NCCL code run on a CPU; nothing else differs."""
    import torch.distributed as dist
    import torch.nn as nn
    import torchvision.datasets.cifar as tv_cifar

    init = dist.init_process_group

    def init_process_group(backend=None, *args, **kw):  # NCCL needs CUDA; gloo is torch's CPU backend
        return init("gloo", *args, **kw)

    dist.init_process_group = init_process_group
    torch.Tensor.cuda = lambda self, *args, **kw: self  # tensors and modules stay on the CPU
    nn.Module.cuda = lambda self, *args, **kw: self
    torch.cuda.set_device = lambda *args, **kw: None
    torch.cuda.FloatTensor = lambda *args: torch.FloatTensor(*args)  # LogitAdjust builds its log-prior with it

    class CpuDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, module, device_ids=None, **kw):  # device_ids=[gpu] is refused for a CPU module
            super().__init__(module, **kw)

    nn.parallel.DistributedDataParallel = CpuDDP
    # Our pickles are rebuilt from PNGs, so their md5s differ from upstream's; and there is no network to download.
    tv_cifar.CIFAR10._check_integrity = lambda self: True
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)  # batches.meta's md5 check
    # main.py reloads its own ckpt.best.pth.tar (a pickled ProCoLoss, numpy scalars) with a bare torch.load,
    # written when torch defaulted to weights_only=False; torch >= 2.6 defaults to True and would refuse it.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    try:
        import tensorboardX  # noqa: F401
    except ImportError:  # not installed here: a stand-in that only makes the log folder, as SummaryWriter does
        class SummaryWriter:
            def __init__(self, log_dir=None, **kw):
                os.makedirs(log_dir, exist_ok=True)

            def add_scalar(self, *args, **kw):
                pass

        sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)


def _run_official(main_py: str, argv: list[str], cwd: str, out: str) -> None:
    """main.py as `torchrun --nproc_per_node=1` would run it: one process, rank 0 of a world of 1."""
    _patch_for_cpu()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, os.path.dirname(main_py))  # its own imports: loss.proco, models, dataset, utils, ...
    os.chdir(cwd)
    sys.argv = [main_py] + argv
    print("official:", " ".join(sys.argv), f"(cwd {cwd})", flush=True)
    try:
        runpy.run_path(main_py, run_name="__main__")
    except FileNotFoundError as e:
        # main.py ends by reloading ckpt.best.pth.tar, which it only writes if top-1 beat 0.0; a tiny run may not.
        if "ckpt.best.pth.tar" not in str(e):
            raise
        print(f"NOTE: official final test skipped: {e} (validation top-1 stayed 0.0, so no 'best' checkpoint)")
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    for root, _, files in os.walk(out):
        for f in files:
            if f.endswith(".pth.tar"):
                p = os.path.join(root, f)
                print(f"checkpoint: {p} ({os.path.getsize(p)} bytes)")


def cmd_cifar(a) -> None:
    out, data = os.path.abspath(a.out), os.path.abspath(a.data)
    main_py = os.path.join(os.path.abspath(a.repo), "ProCo_cifar", "main.py")
    _run_official(main_py, a.official + ["--data", data, "--root_log", out], os.path.abspath(a.repo), out)


def cmd_imagenet(a) -> None:
    d, out = os.path.abspath(a.list_dir), os.path.abspath(a.out)
    lists = os.path.join(d, "dataset", "ImageNet_LT")
    if not os.path.exists(os.path.join(lists, "ImageNet_LT_train.txt")):
        os.makedirs(lists, exist_ok=True)
        pngs = _archive_pngs(a.png, "train")
        per = a.train_images // len(CLASSES)
        paths = []
        for cls in CLASSES:
            os.makedirs(os.path.join(d, "train", cls), exist_ok=True)
            for name in _first(pngs[cls], per):
                with open(os.path.join(d, "train", cls, name), "wb") as f:
                    f.write(pngs[cls][name])
                paths.append(f"train/{cls}/{name}")
        # ImageNetLT fixes 1000 classes and LogitAdjust takes log(count / total): a class with no training image
        # would get log(0). So label j = 0..999 appears once, on image j mod N (each image under 2-3 labels).
        train = [f"{paths[j % len(paths)]} {j}" for j in range(max(1000, len(paths)))]
        n = a.eval_images  # val and test: pairs of the training list (main.py reads both lists)
        for split, rows in (("train", train), ("val", train[:n]), ("test", train[n:2 * n])):
            with open(os.path.join(lists, f"ImageNet_LT_{split}.txt"), "w") as f:
                f.write("".join(r + "\n" for r in rows))
    marks = [a.official[i + 1] for i, x in enumerate(a.official[:-1]) if x == "--mark"]
    if marks and os.path.exists(os.path.join(out, marks[-1], "ckpt.pth.tar")):
        sys.exit(f"{out}/{marks[-1]}/ckpt.pth.tar exists: ProCo/main.py would resume from it; use a fresh --out")
    main_py = os.path.join(os.path.abspath(a.repo), "ProCo", "main.py")
    _run_official(main_py, a.official + ["--data", d, "--root_log", out], d, out)


def _floats(t) -> list:
    """Nested lists of floats at 8 significant digits (enough for float32)."""
    return json.loads(json.dumps(t.tolist()), parse_float=lambda s: float(f"{float(s):.8g}"))


def cmd_reference(a) -> None:
    import importlib
    import torch.nn.functional as F
    from torchvision import transforms

    _patch_for_cpu()  # miller_recurrence calls .cuda() on its tensors
    sub = os.path.join(os.path.abspath(a.repo), "ProCo_cifar" if a.family == "cifar" else "ProCo")
    sys.path.insert(0, sub)  # the pickle names loss.proco.ProCoLoss / EstimatorCV: the official module
    ckpt = torch.load(a.ckpt, map_location="cpu", weights_only=False)  # runs official classes by design
    crit = ckpt["criterion_scl"]
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}  # DDP's prefix
    use_norm = "fc.bias" not in sd  # NormedLinear has no bias, nn.Linear has one
    if a.family == "cifar":
        model = importlib.import_module("models.resnet_cifar").Model(
            num_classes=crit.num_classes, name=ckpt["arch"], feat_dim=crit.feature_num, use_norm=use_norm)
        # main.py's val_transform (built inline there, so restated here)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    else:
        model = importlib.import_module("models.resnext").Model(
            num_classes=crit.num_classes, name=ckpt["arch"], feat_dim=crit.feature_num, use_norm=use_norm)
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    model.load_state_dict(sd)
    model.eval()
    files = [f"{c}/{n}" for c in sorted(os.listdir(a.images)) if os.path.isdir(os.path.join(a.images, c))
             for n in sorted(os.listdir(os.path.join(a.images, c)))[:a.per_class]]
    x = torch.stack([tf(Image.open(os.path.join(a.images, f)).convert("RGB")) for f in files])
    with torch.no_grad():
        h = model.encoder(x)  # the input of fc
        z, logits, _ = model(x)  # z = F.normalize(head(h)), as Model.forward gives it to the loss
        contrast = crit(z)  # ProCoLoss.forward without labels: contrast logits, estimators not updated
    est = copy.deepcopy(crit.estimator_old)
    est.update_kappa()  # the official kappa = p R / (1 - R^2) with its clamps, and logc
    stored = crit.estimator_old.kappa
    print("kappa recomputed == stored:", bool(torch.allclose(est.kappa.float(), stored.float(), rtol=1e-6)))
    mu = F.normalize(crit.estimator_old.Ave, dim=1)  # inline in ProCoLoss.forward (Ave_norm), so restated here
    ref = {"checkpoint": os.path.basename(a.ckpt), "official_repo": "LeapLabTHU/ProCo", "arch": ckpt["arch"],
           "epoch": ckpt["epoch"], "best_acc1": float(ckpt["best_acc1"]), "num_classes": crit.num_classes,
           "feat_dim": crit.feature_num, "use_norm": use_norm, "tau": crit.temperature,
           "transform": str(tf).replace("\n", ""),
           "estimator_old": {"mu": _floats(mu), "kappa": _floats(est.kappa), "logc": _floats(est.logc),
                             "amount": _floats(crit.estimator_old.Amount)},
           "images": [{"file": f, "argmax": int(logits[i].argmax()), "logits": _floats(logits[i]),
                       "h": _floats(h[i]), "z": _floats(z[i]), "contrast_logits": _floats(contrast[i])}
                      for i, f in enumerate(files)]}
    with open(a.out, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print(f"{a.out}: {len(files)} images, {os.path.getsize(a.out)} bytes")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pickles")
    s.add_argument("--png", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, help="first N files per class and split only (smoke tests)")
    s = sub.add_parser("images")
    s.add_argument("--png", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--per-class", type=int, default=20)
    s.add_argument("--split", default="test")
    for name in ("cifar", "imagenet"):
        s = sub.add_parser(name)
        s.add_argument("--repo", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("official", nargs=argparse.REMAINDER, help="-- then the official main.py's arguments")
    s = sub.choices["cifar"]
    s.add_argument("--data", required=True)
    s = sub.choices["imagenet"]
    s.add_argument("--list-dir", required=True)
    s.add_argument("--png", required=True)
    s.add_argument("--train-images", type=int, default=400)
    s.add_argument("--eval-images", type=int, default=40)
    s = sub.add_parser("reference")
    s.add_argument("--repo", required=True)
    s.add_argument("--ckpt", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--family", choices=["cifar", "imagenet"], default="cifar")
    s.add_argument("--per-class", type=int)
    a = p.parse_args()
    if getattr(a, "official", None) and a.official[0] == "--":
        a.official = a.official[1:]
    {"pickles": cmd_pickles, "images": cmd_images, "cifar": cmd_cifar, "imagenet": cmd_imagenet,
     "reference": cmd_reference}[a.cmd](a)


if __name__ == "__main__":
    main()
