"""The model-repository extension, driven by the real Triton clients (HTTP and gRPC).

A repository of two models (the bundled one as the default, and a renamed copy of it) is served
by one `target/debug/proco-serve`. The index lists both with their states; the copy is loaded,
answers, is unloaded (then an inference raises `InferenceServerException`, never a 500), and is
loaded again with the same answers bit for bit. While it is unloaded and loaded 50 times over
gRPC, 8 clients streaming `/v2` requests to the default model see no failure.
"""

import json
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_triton_client import MODEL, REPO, THREE, Server, http_images

COPY = "cifar10-lt-copy"
TOKEN = "oip-repository-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# gRPC metadata keys are lower case.
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}


def make_repository(root: Path):
    for folder, name in (("default", MODEL), ("copy", COPY)):
        target = root / folder
        target.mkdir()
        for f in (REPO / "models" / "cifar10-lt").iterdir():
            if f.is_file():
                shutil.copy(f, target / f.name)
        manifest = target / "model.toml"
        manifest.write_text(manifest.read_text().replace(MODEL, name))
        protos = target / "prototypes.json"
        doc = json.loads(protos.read_text())
        doc["model"] = name
        protos.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="proco-repository-"))
    make_repository(root)
    s = Server(["--model-dir", str(root / "default"), "--model-repository", str(root),
                "--admin-token", TOKEN, "--reload-poll-ms", "0"])
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.http_addr, network_timeout=120.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    yield client
    client.close()


def states_http(http):
    return {m["name"]: m.get("state") for m in http.get_model_repository_index()}


def states_grpc(grpc):
    return {m.name: m.state for m in grpc.get_model_repository_index().models}


def probabilities(http, model, files=THREE):
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    result = http.infer(model, [http_images(files)], outputs=outputs)
    return result.as_numpy("probabilities")


def test_index_load_unload_load_again(http, grpc):
    assert states_http(http) == {MODEL: "READY", COPY: "UNAVAILABLE"}
    assert states_grpc(grpc) == {MODEL: "READY", COPY: "UNAVAILABLE"}
    assert "model_repository" in http.get_server_metadata()["extensions"]

    with pytest.raises(InferenceServerException):
        http.load_model(COPY)  # no token
    http.load_model(COPY, headers=AUTH)
    assert http.is_model_ready(COPY)
    assert states_grpc(grpc)[COPY] == "READY"
    first = probabilities(http, COPY)
    assert np.array_equal(first, probabilities(http, MODEL))

    grpc.unload_model(COPY, headers=GRPC_AUTH)
    assert states_http(http)[COPY] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as e:
        probabilities(http, COPY)
    assert "not loaded" in str(e.value)
    with pytest.raises(InferenceServerException):
        grpc.unload_model(MODEL, headers=GRPC_AUTH)  # the default model stays

    grpc.load_model(COPY, headers=GRPC_AUTH)
    assert np.array_equal(probabilities(http, COPY), first)


def test_streams_to_one_model_survive_50_loads_of_another(server, grpc):
    stop = threading.Event()
    counts = {"ok": 0, "failed": []}
    lock = threading.Lock()

    def stream():
        client = httpclient.InferenceServerClient(server.http_addr, network_timeout=120.0)
        try:
            while not stop.is_set():
                try:
                    probabilities(client, MODEL, THREE[:1])
                    with lock:
                        counts["ok"] += 1
                except Exception as e:  # any failure is counted and reported
                    with lock:
                        counts["failed"].append(repr(e))
        finally:
            client.close()

    clients = [threading.Thread(target=stream) for _ in range(8)]
    for c in clients:
        c.start()
    try:
        for _ in range(50):
            grpc.load_model(COPY, headers=GRPC_AUTH)
            grpc.unload_model(COPY, headers=GRPC_AUTH)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert counts["failed"] == [], counts["failed"][:5]
    assert counts["ok"] > 0
    print(f"8 streams to {MODEL}: {counts['ok']} answers, 0 failures, while {COPY} loaded and "
          f"unloaded 50 times")
