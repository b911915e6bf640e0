#!/usr/bin/env python3
"""Raw ONNX Runtime images/s of the fp32 and INT8 encoders, interleaved, with the CPU's flags.

    .venv/bin/python scripts/bench_int8.py --rounds 3 --seconds 4 --json benches/results/int8/raw.json
    .venv/bin/python scripts/bench_int8.py --report benches/results/int8/raw.json   # the table again

Each round times, for every batch size (1, 8, 32), fp32 then int8 (the order alternates between
rounds), so both variants see the same minutes of a noisy shared machine; the speed-up is the
ratio int8 / fp32 within each pair, and the summary is the median of the rounds' ratios. Timing
and session settings are scripts/ort_baseline.py's (the server's defaults: intra/inter threads 0,
MAX_EFFICIENCY policy; images decoded beforehand from the 40 fixtures; `session.run` only).

INT8 speed depends on the instruction set: ONNX Runtime's u8s8 kernels use AVX2 (VPMADDUBSW),
AVX-512BW or AVX-512 VNNI / AVX-VNNI when present, so the CPU's name and those flags are
recorded with the results.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info():
    name, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "?":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model_name": name, "cpus": os.cpu_count(), "flags": {f: f in flags for f in FLAGS}}


def baseline_module():
    spec = importlib.util.spec_from_file_location("ort_baseline", os.path.join(HERE, "ort_baseline.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(args):
    ob = baseline_module()
    with open(os.path.join(args.model_dir, "model.toml"), "rb") as f:
        manifest = tomllib.load(f)
    inp = manifest["input"]
    models = {"fp32": os.path.join(args.model_dir, manifest["encoder"]),
              "int8": os.path.join(args.model_dir, manifest["variants"]["int8"]["encoder"])}
    _, images = ob.load_images(args.fixtures, inp["height"], inp["width"])
    sessions = {k: ob.make_session(path, True)[1] for k, path in models.items()}
    import onnxruntime as ort
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = []
    for r in range(args.rounds):
        for b in sizes:
            order = ["fp32", "int8"] if r % 2 == 0 else ["int8", "fp32"]
            pair = {}
            for v in order:
                pair[v] = ob.bench(sessions[v], inp["name"], images, b, args.seconds, args.warmup)
                print(f"round {r + 1} batch {b} {v}: {pair[v]['images_per_s']:.1f} images/s "
                      f"(other CPU load {pair[v]['other_cpus_busy']:.2f})", file=sys.stderr, flush=True)
            runs.append({"round": r + 1, "batch_size": b, "order": order, **pair})
    return {
        "models": models, "onnxruntime": ort.__version__, "cpu": cpu_info(),
        "sha256": {k: hashlib.sha256(open(path, "rb").read()).hexdigest() for k, path in models.items()},
        "loadavg_before": open("/proc/loadavg").read().split()[:3],
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "seconds": args.seconds, "warmup": args.warmup, "runs": runs,
    }


def report(res):
    cpu = res["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    print(f"CPU: {cpu['model_name']}, {cpu['cpus']} CPUs; flags: {flags}")
    print(f"onnxruntime {res['onnxruntime']}, {res['seconds']:g} s per measurement, started {res['started_utc']}, "
          f"load average before {' '.join(res['loadavg_before'])}")
    print()
    print("| round | batch | fp32 images/s | int8 images/s | int8 / fp32 | other CPU load (fp32 / int8) |")
    print("|---|---|---|---|---|---|")
    ratios = {}
    for run in res["runs"]:
        f, i = run["fp32"], run["int8"]
        ratio = i["images_per_s"] / f["images_per_s"]
        ratios.setdefault(run["batch_size"], []).append(ratio)
        print(f"| {run['round']} | {run['batch_size']} | {f['images_per_s']:.1f} | {i['images_per_s']:.1f} | "
              f"{ratio:.2f} | {f['other_cpus_busy']:.2f} / {i['other_cpus_busy']:.2f} |")
    print()
    print("| batch | int8 / fp32, median of the rounds | min | max |")
    print("|---|---|---|---|")
    for b, r in ratios.items():
        print(f"| {b} | **{statistics.median(r):.2f}** | {min(r):.2f} | {max(r):.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/cifar10-lt")
    ap.add_argument("--fixtures", default="tests/fixtures/parity/*.jpg")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--report", metavar="JSON", help="print the table of a saved run and exit")
    args = ap.parse_args()
    if args.report:
        report(json.load(open(args.report)))
        return 0
    res = measure(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
