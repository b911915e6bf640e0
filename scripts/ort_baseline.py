#!/usr/bin/env python3
"""Raw ONNX Runtime baseline for scripts/loadtest.py: the bundled encoder alone, no server.

Run with the project venv (`.venv/bin/python`: onnxruntime, numpy, Pillow). It decodes the
same fixture JPEGs (`tests/fixtures/parity/*.jpg`) as the server would (PIL/libjpeg-turbo,
RGB, shorter side to the model's size then centre crop, CHW float32 in [0, 1]), builds
batches from them, and times `session.run` alone (outputs fetched as numpy arrays; decoding
is done beforehand and not timed), for --seconds per batch size after a warm-up.

The session mirrors the server's defaults (`config/default.toml`: execution_provider auto,
which is CPU here; intra_threads = inter_threads = 0, i.e. ONNX Runtime decides; default
graph optimisation; the `ort` crate also sets the MAX_EFFICIENCY device selection policy).

Batch sizes: --batch-sizes, plus with --loadtest LT_JSON the rounded mean batch size of each
level of that load test (and always 1).
"""

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_images(pattern, height, width):
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"ort_baseline: no images match {pattern}")
    return files, [prepare(Image.open(p), height, width) for p in files]


def prepare(img, height, width):
    """As the server prepares an image: RGB, shorter side to the model's size (bilinear), centre
    crop, CHW float32 in [0, 1]."""
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (width, height):
        scale = max(width / w, height / h)
        nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        x, y = (nw - width) // 2, (nh - height) // 2
        img = img.crop((x, y, x + width, y + height))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def make_session(model, policy):
    so = ort.SessionOptions()  # intra/inter threads 0: ONNX Runtime decides, like the server
    if policy:
        so.set_provider_selection_policy(ort.OrtExecutionProviderDevicePolicy.MAX_EFFICIENCY)
        sess = ort.InferenceSession(model, sess_options=so)
    else:
        sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    return so, sess


def cpu_now():
    """(this process's CPU seconds, the whole machine's non-idle CPU seconds or None)."""
    t = os.times()
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        machine = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        machine = None
    return t.user + t.system, machine


def bench(sess, input_name, images, batch, seconds, warmup):
    n = len(images)
    # A few distinct batches, cycling through the fixtures.
    batches = []
    for k in range(max(1, min(8, n))):
        idx = [(k * batch + j) % n for j in range(batch)]
        batches.append(np.ascontiguousarray(np.stack([images[i] for i in idx])))
    end = time.perf_counter() + warmup
    k = 0
    while time.perf_counter() < end:
        sess.run(None, {input_name: batches[k % len(batches)]})
        k += 1
    times = []
    c0 = cpu_now()
    t0 = time.perf_counter()
    end = t0 + seconds
    k = 0
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        sess.run(None, {input_name: batches[k % len(batches)]})
        times.append(time.perf_counter() - t)
        k += 1
    elapsed = time.perf_counter() - t0
    c1 = cpu_now()
    runs = len(times)
    own = (c1[0] - c0[0]) / elapsed
    machine = (c1[1] - c0[1]) / elapsed if c0[1] is not None and c1[1] is not None else None
    return {
        "batch_size": batch,
        "runs": runs,
        "seconds": elapsed,
        "images_per_s": runs * batch / elapsed,
        "ms_per_batch_mean": 1e3 * statistics.fmean(times),
        "ms_per_batch_median": 1e3 * statistics.median(times),
        "ms_per_image": 1e3 * statistics.fmean(times) / batch,
        "own_cpus_busy": own,
        "machine_cpus_busy": machine,
        "other_cpus_busy": machine - own if machine is not None else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/cifar10-lt")
    ap.add_argument("--fixtures", default="tests/fixtures/parity/*.jpg")
    ap.add_argument("--batch-sizes", default="1", help="comma-separated")
    ap.add_argument("--loadtest", help="scripts/loadtest.py JSON: add its rounded mean batch sizes")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per batch size")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--no-policy", action="store_true",
                    help="providers=[CPU] instead of the MAX_EFFICIENCY selection policy")
    ap.add_argument("--json")
    args = ap.parse_args()

    with open(os.path.join(args.model_dir, "model.toml"), "rb") as f:
        manifest = tomllib.load(f)
    inp = manifest["input"]
    if inp.get("color_order", "rgb") != "rgb" or inp.get("resize") != "shorter_side_then_center_crop":
        raise SystemExit("ort_baseline: only rgb + shorter_side_then_center_crop models are handled")
    model = os.path.join(args.model_dir, manifest.get("encoder", "encoder.onnx"))

    sizes = {int(b) for b in args.batch_sizes.split(",") if b.strip()} | {1}
    if args.loadtest:
        with open(args.loadtest) as f:
            lt = json.load(f)
        for L in lt["levels"]:
            b = L["server"]["batch_size"]
            if b == b:
                sizes.add(max(1, round(b)))
    sizes = sorted(sizes)

    files, images = load_images(args.fixtures, inp["height"], inp["width"])
    so, sess = make_session(model, not args.no_policy)
    input_name = inp["name"]
    print(f"onnxruntime {ort.__version__}, providers {sess.get_providers()}, "
          f"intra_op_num_threads {so.intra_op_num_threads} (0 = default), "
          f"inter_op_num_threads {so.inter_op_num_threads}, {os.cpu_count()} CPUs; "
          f"{len(images)} images; batch sizes {sizes}", file=sys.stderr, flush=True)
    results = []
    for b in sizes:
        r = bench(sess, input_name, images, b, args.seconds, args.warmup)
        print(f"batch {b}: {r['runs']} runs, {r['images_per_s']:.1f} images/s, "
              f"{r['ms_per_image']:.3f} ms/image", file=sys.stderr, flush=True)
        results.append(r)

    out = {
        "model": model,
        "onnxruntime": ort.__version__,
        "providers": sess.get_providers(),
        "session": {
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "graph_optimization_level": str(so.graph_optimization_level),
            "execution_mode": str(so.execution_mode),
            "selection_policy": None if args.no_policy else "MAX_EFFICIENCY",
        },
        "images": len(images),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg_before": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "results": results,
    }
    print()
    print(f"Raw ONNX Runtime {ort.__version__} ({', '.join(sess.get_providers())}, intra-op threads "
          f"{so.intra_op_num_threads} = default), {model}, {len(images)} fixture images, "
          f"{args.seconds:g} s per batch size:")
    print()
    print("| batch | runs | images/s | ms/batch (mean) | ms/batch (median) | ms/image "
          "| CPUs busy: this process | CPUs busy: everything else |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        other = r["other_cpus_busy"]
        print(f"| {r['batch_size']} | {r['runs']} | {r['images_per_s']:.1f} | {r['ms_per_batch_mean']:.3f} "
              f"| {r['ms_per_batch_median']:.3f} | {r['ms_per_image']:.3f} | {r['own_cpus_busy']:.2f} "
              f"| {'?' if other is None else f'{other:.2f}'} |")
    print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
