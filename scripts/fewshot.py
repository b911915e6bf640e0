#!/usr/bin/env python3
"""Few-shot class addition through the running server: what teaching prototypes is worth.

Starts `target/release/proco-serve` on a temporary copy of models/cifar10-lt and, over HTTP only:
  1. evaluates the original prototypes on the balanced CIFAR-10 test set (rules vmf and proco);
  2. removes `truck` (DELETE /admin/prototypes/classes/truck) and teaches it back from k = 5, 20, 50
     training images that the long-tailed subset and the validation split did not use
     (POST /admin/prototypes/examples?label=truck&create=true), rolling back to the removed state
     between values of k (POST /admin/prototypes/rollback);
  3. rolls back to the original and adds the same k images to truck's training prototype (truck is
     the rarest class of CIFAR-10-LT: 50 training images).
After each step it reports top-1 on truck and overall, for both rules. Needs a CIFAR-10 archive
(--data: the PNG or the JPEG copy) and .venv (numpy, PIL: train/data.py computes the
split). Usage: .venv/bin/python scripts/fewshot.py [--out models/cifar10-lt/FEWSHOT.md]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np  # noqa: E402

from train.data import CLASSES, _read_members, long_tailed_split  # noqa: E402

TOKEN = "fewshot"
BATCH = 64
KS = (5, 20, 50)


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart(images):
    boundary = uuid.uuid4().hex
    out = bytearray()
    for i, blob in enumerate(images):
        ext = "png" if blob.startswith(b"\x89PNG\r\n\x1a\n") else "jpeg"
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"i{i}\"; filename=\"{i}.{ext}\"\r\n"
                f"Content-Type: image/{ext}\r\n\r\n").encode()
        out += blob + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self, model_dir):
        self.proc = subprocess.Popen(
            ["target/release/proco-serve", "--listen", "127.0.0.1:0", "--model-dir", model_dir,
             "--reload-poll-ms", "0", "--max-images-per-request", str(BATCH), "--prototype-history", "50", "--grpc-listen", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PROCO_ADMIN_TOKEN": TOKEN})
        line = self.proc.stdout.readline().strip()
        self.base = "http://" + line.rsplit(" ", 1)[1]
        for _ in range(600):
            try:
                if http("GET", self.base + "/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not become ready")

    def admin(self, method, path, body=None, content_type=None):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if content_type:
            headers["Content-Type"] = content_type
        status, answer = http(method, self.base + path, body, headers)
        if status != 200:
            raise SystemExit(f"{method} {path}: {status} {answer}")
        return answer

    def learn(self, label, images, create):
        body, ctype = multipart(images)
        query = f"label={label}" + ("&create=true" if create else "")
        return self.admin("POST", f"/admin/prototypes/examples?{query}", body, ctype)

    def top1(self, rule, images):
        """The top-1 label of every image under `rule`, two client threads."""
        chunks = [images[i:i + BATCH] for i in range(0, len(images), BATCH)]
        out = [None] * len(chunks)

        def work(indices):
            for j in indices:
                body, ctype = multipart(chunks[j])
                status, answer = http("POST", f"{self.base}/v1/classify?rule={rule}&top_k=1", body,
                                      {"Content-Type": ctype})
                if status != 200:
                    raise SystemExit(f"classify: {status} {answer}")
                out[j] = [r["predictions"][0]["label"] for r in answer["results"]]

        threads = [threading.Thread(target=work, args=(range(t, len(chunks), 2),)) for t in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return [label for chunk in out for label in chunk]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.xz")
    ap.add_argument("--out", default="models/cifar10-lt/FEWSHOT.md")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    started = time.time()

    train, test = [], []
    for split, cls, name, blob in _read_members(args.data):
        (train if split == "train" else test).append((CLASSES.index(cls), name, blob))
    train.sort(key=lambda r: (r[0], r[1]))
    test.sort(key=lambda r: (r[0], r[1]))
    lt_idx, val_idx = long_tailed_split(np.array([r[0] for r in train]))
    used = set(lt_idx.tolist()) | set(val_idx.tolist())
    truck = CLASSES.index("truck")
    unused = [i for i, r in enumerate(train) if r[0] == truck and i not in used]
    random.Random(args.seed).shuffle(unused)
    teach = [train[i][2] for i in unused[:max(KS)]]
    test_images = [r[2] for r in test]
    test_labels = [CLASSES[r[0]] for r in test]
    print(f"{len(test)} test images; {len(unused)} truck training images unused by the LT subset and "
          f"validation; teaching from the first k of them (seed {args.seed})", file=sys.stderr)

    work = tempfile.mkdtemp()
    model_dir = os.path.join(work, "model")
    shutil.copytree("models/cifar10-lt", model_dir, ignore=shutil.ignore_patterns("*.versions", "logs"))
    server = Server(model_dir)
    rows = []

    def evaluate(setting, k):
        row = {"setting": setting, "k": k}
        for rule in ("vmf", "proco"):
            pred = server.top1(rule, test_images)
            hits = [p == y for p, y in zip(pred, test_labels)]
            row[rule] = (100 * sum(h for h, y in zip(hits, test_labels) if y == "truck") / test_labels.count("truck"),
                         100 * sum(hits) / len(hits))
        rows.append(row)
        print(f"{setting:<40} k={k!s:<3} vmf truck {row['vmf'][0]:.1f} all {row['vmf'][1]:.2f}   "
              f"proco truck {row['proco'][0]:.1f} all {row['proco'][1]:.2f}   ({time.time() - started:.0f} s)",
              file=sys.stderr)

    try:
        original = server.admin("GET", "/v1/prototypes/versions")["current"]
        evaluate("original prototypes (50 training images)", "-")
        removed = server.admin("DELETE", "/admin/prototypes/classes/truck")["version"]
        for k in KS:
            server.admin("POST", f"/admin/prototypes/rollback?version={removed}")
            server.learn("truck", teach[:k], create=True)
            evaluate("truck removed, then taught from k images", k)
        for k in KS:
            server.admin("POST", f"/admin/prototypes/rollback?version={original}")
            server.learn("truck", teach[:k], create=False)
            evaluate("truck's training prototype + k images", k)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# Few-shot class addition through the server",
        "",
        f"Recomputed by `.venv/bin/python scripts/fewshot.py --data {os.path.basename(args.data)}` (the release server,",
        f"over HTTP only) from the committed model and prototypes and the images of that CIFAR-10 archive. `truck` is the rarest class of",
        "CIFAR-10-LT (50 training images). The k taught images are truck training images that neither the",
        f"long-tailed subset nor the validation split used (seed {args.seed}; the same images for every row).",
        "Top-1 in % on the balanced test set (1,000 truck images, 10,000 in all), uniform prior, fitted",
        "temperatures (they do not change top-1).",
        "",
        "| setting | k | vmf: truck | vmf: all | proco: truck | proco: all |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['k']} | {r['vmf'][0]:.1f} | {r['vmf'][1]:.2f} | "
                     f"{r['proco'][0]:.1f} | {r['proco'][1]:.2f} |")
    lines += ["", f"Wall time {time.time() - started:.0f} s on {os.cpu_count()} CPUs."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
