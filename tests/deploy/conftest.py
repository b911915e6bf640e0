"""Shared helpers for the deploy checks: the repository, the server's defaults, a running server."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def server_binary() -> Path:
    env = os.environ.get("PROCO_SERVE_BIN")
    if env:
        return Path(env)
    target = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
    for p in (target / "debug/proco-serve", target / "release/proco-serve"):
        if p.exists():
            return p
    pytest.fail("no proco-serve binary: run cargo build first (or set PROCO_SERVE_BIN)")


def defaults() -> dict:
    """The server's defaults as config/default.toml states them."""
    return tomllib.loads((ROOT / "config/default.toml").read_text())


def help_text() -> str:
    return subprocess.run([str(server_binary()), "--help"], capture_output=True, text=True, check=True).stdout


def load_yaml_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Everything here is on 127.0.0.1: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, timeout: float = 5.0):
    """(status, body); (0, b"") when nothing listens yet."""
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


class Server:
    """proco-serve on 127.0.0.1 with free ports; stopped (SIGTERM, then kill) at the end."""

    def __init__(self, *args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCO_")}
        self.proc = subprocess.Popen(
            [str(server_binary()), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
             "--drain-delay-ms", "0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        self.http = self.grpc = None
        deadline = time.time() + 60
        for line in self.proc.stdout:
            self.log.append(line)
            m = re.match(r"proco-serve (grpc )?listening on (\S+)", line)
            if m and m.group(1):
                self.grpc = m.group(2)
                break
            if m:
                self.http = m.group(2)
            if time.time() > deadline:
                break
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        assert self.http, "server did not start: " + "".join(self.log)
        self.url = f"http://{self.http}"
        while time.time() < deadline:
            if get(self.url + "/health/ready")[0] == 200:
                return
            time.sleep(0.1)
        pytest.fail("server never became ready")

    def _drain(self, stream):
        for line in stream:
            self.log.append(line)

    def json(self, path: str):
        status, body = get(self.url + path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()
