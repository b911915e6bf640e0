"""Hot reload the Kubernetes way: kubelet updates a mounted ConfigMap by writing a new
timestamped directory and atomically swapping the ..data symlink to it; the files the
server opens (model.toml, prototypes.json) are symlinks through ..data. The real binary must
serve the new prototypes within one poll interval and refuse an invalid file."""
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import DEPLOY, ROOT, Server, defaults, get

FILES = ("model.toml", "prototypes.json")


class ConfigMapVolume:
    """The layout kubelet's AtomicWriter makes for a ConfigMap volume."""

    def __init__(self, root: Path, files: dict):
        self.root = root
        root.mkdir()
        self.n = 0
        self.current = self._write(files)
        os.symlink(self.current, root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def _write(self, files: dict) -> str:
        self.n += 1
        name = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{self.n:09d}"
        d = self.root / name
        d.mkdir()
        for k, v in files.items():
            (d / k).write_text(v)
        return name

    def update(self, files: dict):
        """New directory, ..data_tmp symlink, rename over ..data (atomic), old directory removed."""
        new = self._write(files)
        tmp = self.root / "..data_tmp"
        os.symlink(new, tmp)
        os.rename(tmp, self.root / "..data")
        shutil.rmtree(self.root / self.current)
        self.current = new


def model_files(prototypes: str) -> dict:
    toml = (DEPLOY / "k8s/base/model/model.toml").read_text()
    # The ConfigMap's model.toml names the encoder where the image has it; here, the repository's.
    toml = re.sub(r'(?m)^encoder = ".*"$', f'encoder = "{ROOT / "models/cifar10-lt/encoder.onnx"}"', toml)
    return {"model.toml": toml, "prototypes.json": prototypes}


def reloads(server, result):
    body = get(server.url + "/metrics")[1].decode()
    m = re.search(r'proco_prototype_reloads_total\{model="[^"]*",result="%s"\} (\S+)' % result, body)
    return float(m.group(1)) if m else 0.0


def wait_version(server, old, limit_s):
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        v = server.json("/v1/model")["prototypes_version"]
        if v != old:
            return v, time.monotonic() - start
        time.sleep(0.02)
    return old, time.monotonic() - start


def test_configmap_symlink_swap_reloads(tmp_path):
    poll_ms = int(defaults()["reload_poll_ms"])
    original = (ROOT / "models/cifar10-lt/prototypes.json").read_text()
    vol = ConfigMapVolume(tmp_path / "model", model_files(original))
    server = Server("--model-dir", str(vol.root), "--prototype-history", "0",
                    "--reload-poll-ms", str(poll_ms))
    try:
        v0 = server.json("/v1/model")["prototypes_version"]

        # A valid new version: one class's concentration changed.
        doc = json.loads(original)
        doc["classes"][0]["kappa"] *= 1.01
        vol.update(model_files(json.dumps(doc, indent=1)))
        v1, took = wait_version(server, v0, 10 * poll_ms / 1000)
        print(f"new prototypes served {took * 1000:.0f} ms after the swap (poll interval {poll_ms} ms)")
        assert v1 != v0, "the server never served the swapped-in prototypes:\n" + "".join(server.log[-20:])
        # One poll interval, plus the time to read and check the file (a debug build is slow).
        assert took <= poll_ms / 1000 + 0.5, f"took {took:.2f} s, poll interval {poll_ms} ms"

        # An invalid file: refused, counted, and the previous version stays in service.
        rejected = reloads(server, "rejected")
        vol.update(model_files('{"schema": "proco-prototypes", "classes": ['))
        deadline = time.monotonic() + 10 * poll_ms / 1000
        while reloads(server, "rejected") == rejected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reloads(server, "rejected") == rejected + 1
        assert server.json("/v1/model")["prototypes_version"] == v1
        assert get(server.url + "/health/ready")[0] == 200

        # Back to the original: served again.
        vol.update(model_files(original))
        v2, _ = wait_version(server, v1, 10 * poll_ms / 1000)
        assert v2 == v0
    finally:
        server.stop()
