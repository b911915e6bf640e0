"""The server's resize against torchvision's, on real photos: Resize(256) + CenterCrop(224) with PIL's
bilinear filter (antialiased), the official ImageNet-LT / iNaturalist test transform.

For each photo it compares the pixels `proco-serve preprocess` hands the encoder with torchvision's, for the
server's resampling (PIL's algorithm, `filter = "triangle"`) and for the image crate's triangle filter it used
before (`filter = "image-triangle"`). With --encoder (an imported 224-px model's encoder.onnx) it also runs
both pixel sets through the encoder and reports the largest change of the linear head's softmax and whether
the top-1 class agrees. EXIF orientation: the server applies it, torchvision's loader does not, so the
reference is torchvision on the photo turned upright (PIL's exif_transpose).

    python3 scripts/preprocess_parity.py --binary target/release/proco-serve tests/fixtures/photos/* \
        [--encoder models/NAME/encoder.onnx] [--markdown]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

MANIFEST = """name = "preprocess-parity"
encoder = "encoder.onnx"
prototypes = "prototypes.json"
[input]
name = "image"
height = 224
width = 224
resize = "shorter_side_then_center_crop"
resize_shorter = 256
filter = "{filter}"
[outputs]
feature = "feature"
logits = "logits"
"""


def server_pixels(binary, photos, filt, work):
    model = os.path.join(work, filt)
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "model.toml"), "w") as fh:
        fh.write(MANIFEST.format(filter=filt))
    out = os.path.join(work, f"{filt}-out")
    subprocess.run([binary, "preprocess", "--model-dir", model, "--out", out, *photos], check=True,
                   stdout=subprocess.DEVNULL)
    return {p: np.fromfile(os.path.join(out, os.path.basename(p) + ".rgb"), np.uint8).reshape(224, 224, 3)
            for p in photos}


def torchvision_pixels(path):
    from torchvision import transforms

    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    t = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
                            transforms.CenterCrop(224)])
    return np.asarray(t(img), dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--binary", default="target/release/proco-serve")
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the server's pixels equal torchvision's")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        now = server_pixels(a.binary, a.photos, "triangle", work)
        before = server_pixels(a.binary, a.photos, "image-triangle", work)
    sess = None
    if a.encoder:
        import onnxruntime as ort
        sess = ort.InferenceSession(a.encoder, providers=["CPUExecutionProvider"])

    def probs(px):
        x = (px.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        f = sess.run(["logits"], {"image": x})[0][0].astype(np.float64)
        e = np.exp(f - f.max())
        return e / e.sum()

    rows, worst = [], 0
    for p in a.photos:
        ref = torchvision_pixels(p)
        size = ImageOps.exif_transpose(Image.open(p)).size
        row = [os.path.basename(p), f"{size[0]} x {size[1]}"]
        for px in (before[p], now[p]):
            d = np.abs(px.astype(int) - ref.astype(int))
            row += [int(d.max()), f"{(d > 0).mean() * 100:.2f}%"]
        worst = max(worst, int(np.abs(now[p].astype(int) - ref.astype(int)).max()))
        if sess:
            pr = probs(ref)
            for px in (before[p], now[p]):
                pp = probs(px)
                row += [f"{np.abs(pp - pr).max():.1e}", "yes" if pp.argmax() == pr.argmax() else "no"]
        rows.append(row)
    head = ["photo", "size (upright)", "before: largest difference", "before: pixels differing", "now: largest difference",
            "now: pixels differing"]
    if sess:
        head += ["before: max softmax change", "before: same top-1", "now: max softmax change", "now: same top-1"]
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(map(str, r)) + " |")
    else:
        for r in rows:
            print("  ".join(f"{h}={v}" for h, v in zip(head, r)))
    if a.check and worst:
        sys.exit(f"the server's pixels differ from torchvision's by up to {worst} levels")


if __name__ == "__main__":
    main()
