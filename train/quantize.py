"""INT8 variant of the exported encoder: static QDQ quantisation with ONNX Runtime's own tooling.

    python -m train.quantize --val data/splits/val            # writes models/cifar10-lt/encoder.int8.onnx
    python -m train.quantize --val data/splits/val --compare   # also prints the candidate settings on val

Calibration and the choice between candidate settings use the **validation split only**
(`python -m train folders` writes it; 100 images per class the LT training subset did not keep);
the test set is never read here. Pins: `train/requirements-quant.txt` (onnxruntime 1.31.1, the
version of the library the server loads).

What is quantised: every Conv and Gemm (weights int8 per output channel, activations uint8 per
tensor, QDQ format so that ONNX Runtime fuses each DQ -> op -> Q into its integer kernels on any
CPU, and a runtime without those kernels still runs the graph in float). The residual Adds,
the global average pool and the tail that normalises the feature (ReduceL2, Clip, Div) stay
float32: the `feature` output is renormalised **in the graph**, exactly as in the fp32 encoder,
so it is unit-norm to float precision and the engine needs no change.

`reduce_range` (7-bit weights) is a candidate because ONNX Runtime's u8s8 kernels on AVX2 and
AVX-512 CPUs without VNNI use VPMADDUBSW, whose int16 sums can saturate with full 8-bit weights.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Candidate settings, compared on the validation split; the first is the shipped default unless
# --setting names another. Chosen before looking at any test-set figure.
SETTINGS = {
    "minmax-reduce": dict(calibrate_method=CalibrationMethod.MinMax, reduce_range=True),
    "minmax": dict(calibrate_method=CalibrationMethod.MinMax, reduce_range=False),
    "percentile-reduce": dict(calibrate_method=CalibrationMethod.Percentile, reduce_range=True,
                              extra=dict(CalibPercentile=99.999)),
}


def load_folder(root: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`root/<label>/*.jpg` -> ([N,3,H,W] float32 RGB in [0,1], labels). Images already at the
    model's size (CIFAR) are used as they are; others get the manifest's shorter-side resize and
    centre crop."""
    xs, ys = [], []
    h, w = size
    for y, label in enumerate(LABELS):
        files = sorted(glob.glob(os.path.join(root, label, "*.jpg")) + glob.glob(os.path.join(root, label, "*.png")))
        for path in files:
            img = Image.open(path).convert("RGB")
            if img.size != (w, h):
                s = max(w / img.size[0], h / img.size[1])
                nw, nh = max(w, round(img.size[0] * s)), max(h, round(img.size[1] * s))
                img = img.resize((nw, nh), Image.BILINEAR)
                img = img.crop(((nw - w) // 2, (nh - h) // 2, (nw - w) // 2 + w, (nh - h) // 2 + h))
            xs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0))
            ys.append(y)
    if not xs:
        raise SystemExit(f"quantize: no images under {root}/<label>/")
    return np.stack(xs), np.asarray(ys)


class Reader(CalibrationDataReader):
    """Feeds the calibration images in batches of 50."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 50):
        self.batches = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def run(path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    z, f = sess.run(["feature", "logits"], {"image": x})
    return z, f


def quantize(fp32: str, out: str, x: np.ndarray, setting: str) -> None:
    opts = dict(SETTINGS[setting])
    extra = opts.pop("extra", {})
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        # Shape inference and ONNX Runtime's float optimisations first, as its docs advise.
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)  # static shapes but the batch: ONNX shape inference suffices
        quantize_static(
            pre, out, Reader(x, "image"),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Gemm"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=opts["calibrate_method"],
            reduce_range=opts["reduce_range"],
            extra_options=dict(extra),
        )
    model = onnx.load(out)
    model.doc_string = (f"INT8 (static QDQ, per-channel int8 weights, uint8 activations, {setting}) of "
                        f"{os.path.basename(fp32)}, calibrated on the validation split by train/quantize.py "
                        f"with onnxruntime {ort.__version__}")
    onnx.save(model, out)


def summary(x, y, ref, cand) -> dict:
    z0, f0 = ref
    z1, f1 = cand
    return {
        "val_top1_linear_fp32": float((f0.argmax(1) == y).mean()),
        "val_top1_linear_int8": float((f1.argmax(1) == y).mean()),
        "argmax_agreement": float((f0.argmax(1) == f1.argmax(1)).mean()),
        "feature_cosine_min": float((z0 * z1).sum(1).min()),
        "feature_cosine_mean": float((z0 * z1).sum(1).mean()),
        "feature_max_abs_diff": float(np.abs(z0 - z1).max()),
        "logits_max_abs_diff": float(np.abs(f0 - f1).max()),
        "feature_norm_max_dev": float(np.abs(np.linalg.norm(z1, axis=1) - 1).max()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/cifar10-lt")
    ap.add_argument("--val", required=True, help="the validation split as folders (python -m train folders)")
    ap.add_argument("--out", default=None, help="default: MODEL_DIR/encoder.int8.onnx")
    ap.add_argument("--setting", default=next(iter(SETTINGS)), choices=list(SETTINGS))
    ap.add_argument("--compare", action="store_true", help="quantise with every setting and print val figures")
    args = ap.parse_args(argv)
    fp32 = os.path.join(args.model_dir, "encoder.onnx")
    out = args.out or os.path.join(args.model_dir, "encoder.int8.onnx")
    x, y = load_folder(args.val, (32, 32))
    print(f"calibration: {len(x)} validation images from {args.val}; onnxruntime {ort.__version__}")
    ref = run(fp32, x)
    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            for name in SETTINGS:
                path = os.path.join(tmp, f"{name}.onnx")
                quantize(fp32, path, x, name)
                print(name, json.dumps(summary(x, y, ref, run(path, x))))
    quantize(fp32, out, x, args.setting)
    print(f"wrote {out} ({args.setting})", json.dumps(summary(x, y, ref, run(out, x))))


if __name__ == "__main__":
    main()
