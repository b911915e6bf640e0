"""The Open Inference Protocol v2 of proco-serve, driven by the real Triton clients.

One `target/debug/proco-serve` (built by `cargo test`) is started for the module, with REST and
gRPC on ephemeral ports, and talked to with `tritonclient.http` (JSON and the binary tensor
extension) and `tritonclient.grpc` (`inference.GRPCInferenceService`):

* health, server metadata, model metadata and model readiness;
* inference with encoded images (`image`, BYTES: raw bytes in the binary form and over gRPC,
  base64 strings in the JSON form), with preprocessed `pixels` (FP32 [N,3,32,32]), with the
  classification extension (`class_count`), with the `rule` / `prior` request parameters;
* the same probabilities as `POST /v1/classify?...&posterior=true` for the same image, rule and
  prior (within 1e-6), the same logits and features as the PyTorch reference in the parity
  manifest (within 1e-4), and probabilities = softmax(logits / T + log prior);
* errors (unknown model or version, bad tensor name, datatype, shape, parameters, an undecodable
  image) raise `InferenceServerException` with the protocol's status, and the server still
  answers afterwards.

Run with `bash tests/oip/run.sh` (own virtual environment, pinned clients).
"""

import base64
import io
import json
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).resolve().parents[2]
PARITY_DIR = REPO / "tests" / "fixtures" / "parity"
MANIFEST = json.loads((PARITY_DIR / "manifest.json").read_text())
IMAGES = MANIFEST["images"]

MODEL = "cifar10-lt-proco-resnet32"
CLASSES = 10
FEATURE_DIM = 128
RULES = ["linear", "proco", "vmf", "ensemble"]
# Same image, rule and prior: FP32 (OIP) against f64 (/v1).
V1_TOLERANCE = 1e-6
# ONNX Runtime against the PyTorch reference (as tests/server_parity.rs).
REFERENCE_TOLERANCE = 1e-4

# Three fixtures of three different classes.
THREE = [IMAGES[0]["file"], IMAGES[17]["file"], IMAGES[39]["file"]]


def server_binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "proco-serve"


def jpeg(file):
    return (PARITY_DIR / file).read_bytes()


def manifest_entry(file):
    return next(i for i in IMAGES if i["file"] == file)


def pixels(file):
    """The encoder's input for one fixture: RGB, CHW, pixels / 255, float32 [3,32,32]."""
    with Image.open(io.BytesIO(jpeg(file))) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert rgb.shape == (32, 32, 3), rgb.shape
    return np.ascontiguousarray((rgb / np.float32(255.0)).transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------


class Server:
    """`proco-serve --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0`, ready; killed by stop()."""

    HTTP_LINE = "proco-serve listening on "
    GRPC_LINE = "proco-serve grpc listening on "

    def __init__(self, extra_args=()):
        exe = server_binary()
        if not exe.exists():
            pytest.fail(f"{exe} does not exist: build it first (cargo test builds it)")
        self.log = tempfile.NamedTemporaryFile(
            prefix="proco-serve-oip-", suffix=".log", delete=False
        )
        # The test decides the configuration; nothing leaks in from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCO_")}
        self.proc = subprocess.Popen(
            [str(exe), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
             "--log-level", "info", *extra_args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.stdout = []
        lines = queue.Queue()

        def drain():
            for line in self.proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        self.http_addr = self.grpc_addr = None
        deadline = time.monotonic() + 60
        while self.http_addr is None or self.grpc_addr is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("did not print both listening addresses within 60 s")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.fail("exited before printing both listening addresses")
            self.stdout.append(line)
            if line.startswith(self.HTTP_LINE):
                self.http_addr = line[len(self.HTTP_LINE):].strip()
            elif line.startswith(self.GRPC_LINE):
                self.grpc_addr = line[len(self.GRPC_LINE):].strip()
        self.base = f"http://{self.http_addr}"
        self._wait_ready()
        self.v1_cache = {}

    def _wait_ready(self):
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.base + "/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.fail("not ready after 120 s")
            time.sleep(0.05)

    def logs(self):
        try:
            return Path(self.log.name).read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def fail(self, why):
        self.stop()
        pytest.fail(f"proco-serve {why}; stdout {self.stdout}; log tail:\n{self.logs()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def alive(self):
        return self.proc.poll() is None

    # -- plain HTTP (/v1 and raw /v2) --------------------------------------------------------

    def get(self, path):
        """(status, parsed JSON body or text)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=60) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def v1_posterior(self, file, rule=None, prior=None):
        """/v1/classify's posterior (f64) for one fixture JPEG, as the sole request body."""
        key = (file, rule, prior)
        if key not in self.v1_cache:
            query = {"posterior": "true"}
            if rule is not None:
                query["rule"] = rule
            if prior is not None:
                query["prior"] = prior
            request = urllib.request.Request(
                self.base + "/v1/classify?" + urllib.parse.urlencode(query),
                data=jpeg(file),
                headers={"Content-Type": "image/jpeg"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=60) as r:
                body = json.load(r)
            post = np.asarray(body["posterior"], dtype=np.float64)
            assert post.shape == (CLASSES,), body
            self.v1_cache[key] = (post, body)
        return self.v1_cache[key]


@pytest.fixture(scope="module")
def server():
    s = Server()
    try:
        yield s
    finally:
        s.stop()
        try:
            os.unlink(s.log.name)
        except OSError:
            pass


@pytest.fixture(scope="module")
def model_info(server):
    status, info = server.get("/v1/model")
    assert status == 200, info
    return info


@pytest.fixture(scope="module")
def version(model_info):
    v = model_info["prototypes_version"]
    assert isinstance(v, str) and v
    return v


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(
        server.http_addr, connection_timeout=10.0, network_timeout=60.0
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    yield client
    client.close()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def http_images(files, binary=True, shape=None):
    data = [jpeg(f) for f in files]
    if not binary:
        # JSON strings cannot hold arbitrary bytes: each element is the base64 of the image.
        data = [base64.b64encode(d) for d in data]
    arr = np.array(data, dtype=np.object_)
    if shape is not None:
        arr = arr.reshape(shape)
    inp = httpclient.InferInput("image", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def grpc_images(files, shape=None, blobs=None):
    arr = np.array(blobs if blobs is not None else [jpeg(f) for f in files], dtype=np.object_)
    if shape is not None:
        arr = arr.reshape(shape)
    inp = grpcclient.InferInput("image", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def pixel_batch(files):
    return np.stack([pixels(f) for f in files]).astype(np.float32)


def http_pixels(files, binary=True):
    arr = pixel_batch(files)
    inp = httpclient.InferInput("pixels", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def grpc_pixels(files):
    arr = pixel_batch(files)
    inp = grpcclient.InferInput("pixels", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


def images_input(proto, files):
    return http_images(files) if proto == "http" else grpc_images(files)


def client_of(proto, http, grpc):
    return http if proto == "http" else grpc


def response_parameters(proto, result):
    """The response's parameters as a plain dict (gRPC: InferParameter unwrapped)."""
    response = result.get_response()
    if proto == "http":
        return dict(response.get("parameters") or {})
    out = {}
    for key, p in response.parameters.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


def response_model(proto, result):
    response = result.get_response()
    if proto == "http":
        return response["model_name"], response.get("model_version"), response.get("id")
    return response.model_name, response.model_version, response.id


def outputs(result, n):
    """probabilities, logits, feature of an answer, with their datatypes and shapes checked."""
    probs = result.as_numpy("probabilities")
    logits = result.as_numpy("logits")
    feature = result.as_numpy("feature")
    for name, arr, dim in [("probabilities", probs, CLASSES), ("logits", logits, CLASSES),
                           ("feature", feature, FEATURE_DIM)]:
        assert arr is not None, f"output {name} missing"
        assert arr.dtype == np.float32, (name, arr.dtype)
        assert arr.shape == (n, dim), (name, arr.shape)
        assert np.all(np.isfinite(arr)), name
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feature, axis=1), 1.0, atol=1e-3)
    return probs, logits, feature


def assert_matches_v1(server, record, probs, files, rule, prior, where):
    """Each row of OIP probabilities equals /v1's posterior for the same file within 1e-6."""
    worst = 0.0
    for row, file in zip(probs, files):
        want, _ = server.v1_posterior(file, rule, prior)
        diff = float(np.max(np.abs(row.astype(np.float64) - want)))
        worst = max(worst, diff)
        assert diff <= V1_TOLERANCE, (
            f"{where} {file} rule={rule} prior={prior}: OIP {row.tolist()} vs /v1 "
            f"{want.tolist()} (max |diff| {diff:.3e})"
        )
    record(worst, f"{where} rule={rule} prior={prior}", count=probs.size)
    return worst


def assert_matches_reference(version, logits, feature, probs, files, rule, prior):
    """Logits and features as the PyTorch reference of the parity manifest (same prototypes)."""
    if version != MANIFEST["prototypes_version"]:
        return  # the served prototypes were changed; the reference is for the shipped ones
    for i, file in enumerate(files):
        ref = manifest_entry(file)
        want_feature = np.asarray(ref["feature"])
        want_logits = np.asarray(ref["balanced_logits"][rule])
        assert np.all(np.abs(feature[i] - want_feature) <= REFERENCE_TOLERANCE * (1 + np.abs(want_feature))), file
        assert np.all(np.abs(logits[i] - want_logits) <= REFERENCE_TOLERANCE * (1 + np.abs(want_logits))), (
            f"{file} rule={rule}: logits {logits[i].tolist()} vs reference balanced logits "
            f"{want_logits.tolist()}"
        )
        if prior in ("uniform", "train"):
            want = np.asarray(ref["posteriors"][rule][prior])
            assert np.max(np.abs(probs[i] - want)) <= REFERENCE_TOLERANCE, file


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def parse_classification(arr, n, k):
    assert arr is not None, "classification output missing"
    assert arr.shape == (n, k), arr.shape
    rows = []
    for row in arr:
        parsed = []
        for s in row:
            text = s.decode("utf-8") if isinstance(s, bytes) else str(s)
            parts = text.split(":", 2)
            assert len(parts) == 3, f"not probability:index:label: {text!r}"
            parsed.append((float(parts[0]), int(parts[1]), parts[2]))
        rows.append(parsed)
    return rows


def assert_classification_agrees(rows, probs, labels, k):
    for parsed, p in zip(rows, probs):
        top = np.sort(p)[::-1][:k]
        got = [q for q, _, _ in parsed]
        assert got == sorted(got, reverse=True), f"not most probable first: {parsed}"
        for (q, index, label), want in zip(parsed, top):
            assert 0 <= index < CLASSES, parsed
            assert label == labels[index], (parsed, labels)
            assert abs(q - float(p[index])) <= 1e-5, (parsed, p.tolist())
            assert abs(q - float(want)) <= 1e-5, (parsed, p.tolist())


def assert_still_serving(proto, http, grpc, server):
    assert server.alive(), f"proco-serve died; log:\n{server.logs()}"
    client = client_of(proto, http, grpc)
    assert client.is_server_ready()
    result = client.infer(MODEL, [images_input(proto, THREE[:1])])
    assert result.as_numpy("probabilities").shape == (1, CLASSES)


def assert_error(excinfo, proto, http_status, grpc_status, *needles):
    e = excinfo.value
    msg = e.message() or ""
    status = e.status()
    if proto == "http":
        assert status == str(http_status), f"HTTP status {status}, want {http_status}: {msg}"
        # The body is {"error": "<message>"}: tritonclient could parse it.
        assert "exception occurred in the client while decoding" not in msg, msg
    else:
        assert status == f"StatusCode.{grpc_status}", f"gRPC status {status}, want {grpc_status}: {msg}"
    assert msg.strip(), "empty error message"
    for needle in needles:
        if isinstance(needle, re.Pattern):
            assert needle.search(msg), f"{needle.pattern!r} not in {msg!r}"
        else:
            assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    return msg


PROTOCOLS = ["http", "grpc"]


# ---------------------------------------------------------------------------------------------
# Health and metadata
# ---------------------------------------------------------------------------------------------


def test_http_health_and_server_metadata(server, http):
    assert http.is_server_live()
    assert http.is_server_ready()
    assert server.get("/v2/health/live")[0] == 200
    assert server.get("/v2/health/ready")[0] == 200
    meta = http.get_server_metadata()
    assert isinstance(meta.get("name"), str) and meta["name"], meta
    assert isinstance(meta.get("version"), str) and meta["version"], meta
    assert {"binary_tensor_data", "classification"} <= set(meta.get("extensions", [])), meta
    status, raw = server.get("/v2")
    assert status == 200 and raw == meta


def test_grpc_health_and_server_metadata(grpc, http):
    assert grpc.is_server_live()
    assert grpc.is_server_ready()
    meta = grpc.get_server_metadata()
    rest = http.get_server_metadata()
    assert meta.name == rest["name"] and meta.version == rest["version"], (meta, rest)
    assert "classification" in meta.extensions, meta


def check_model_metadata(name, versions, platform, inputs, outputs, version):
    assert name == MODEL
    assert version in versions, (versions, version)
    assert isinstance(platform, str)
    inputs = {t[0]: t[1:] for t in inputs}
    outputs = {t[0]: t[1:] for t in outputs}
    assert set(inputs) == {"image", "pixels"}, inputs
    image_type, image_shape = inputs["image"]
    assert image_type == "BYTES"
    assert image_shape in ([-1], [-1, 1]), image_shape
    assert inputs["pixels"] == ("FP32", [-1, 3, 32, 32]), inputs
    assert outputs == {
        "probabilities": ("FP32", [-1, CLASSES]),
        "logits": ("FP32", [-1, CLASSES]),
        "feature": ("FP32", [-1, FEATURE_DIM]),
    }, outputs


def test_http_model_metadata_and_readiness(http, version):
    for v in ["", version]:
        meta = http.get_model_metadata(MODEL, model_version=v)
        check_model_metadata(
            meta["name"], meta.get("versions", []), meta.get("platform", ""),
            [(t["name"], t["datatype"], list(t["shape"])) for t in meta["inputs"]],
            [(t["name"], t["datatype"], list(t["shape"])) for t in meta["outputs"]],
            version,
        )
        assert http.is_model_ready(MODEL, model_version=v)
    assert not http.is_model_ready("no-such-model")


def test_grpc_model_metadata_and_readiness(grpc, version):
    for v in ["", version]:
        meta = grpc.get_model_metadata(MODEL, model_version=v)
        check_model_metadata(
            meta.name, list(meta.versions), meta.platform,
            [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
            [(t.name, t.datatype, list(t.shape)) for t in meta.outputs],
            version,
        )
        assert grpc.is_model_ready(MODEL, model_version=v)
    try:
        assert not grpc.is_model_ready("no-such-model")
    except InferenceServerException as e:
        assert e.status() == "StatusCode.NOT_FOUND", (e.status(), e.message())


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_unknown_model_metadata_is_not_found(proto, http, grpc, server):
    client = client_of(proto, http, grpc)
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_metadata("no-such-model")
    assert_error(excinfo, proto, 404, "NOT_FOUND")
    assert_still_serving(proto, http, grpc, server)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def test_http_infer_binary_images(server, http, model_info, version, record_v1_diff):
    result = http.infer(MODEL, [http_images(THREE)], request_id="oip-binary-1")
    probs, logits, feature = outputs(result, 3)
    name, model_version, rid = response_model("http", result)
    assert (name, model_version, rid) == (MODEL, version, "oip-binary-1")
    params = response_parameters("http", result)
    rule, prior = model_info["default_rule"], model_info["default_prior"]
    assert params.get("prototypes_version") == version, params
    assert params.get("rule") == rule, params
    assert params.get("prior") == prior, params
    assert math.isclose(params["temperature"], model_info["temperatures"][rule], rel_tol=1e-12)
    # No rule or prior given: the server's defaults, as /v1 without them.
    assert_matches_v1(server, record_v1_diff, probs, THREE, None, None, "http binary")
    assert_matches_reference(version, logits, feature, probs, THREE, rule, prior)


def test_http_infer_json_base64_images(http):
    binary = http.infer(MODEL, [http_images(THREE)])
    want = outputs(binary, 3)
    # [N] and [N,1]; outputs asked for in JSON too.
    for shape in [(3,), (3, 1)]:
        result = http.infer(
            MODEL,
            [http_images(THREE, binary=False, shape=shape)],
            outputs=[httpclient.InferRequestedOutput(n, binary_data=False)
                     for n in ("probabilities", "logits", "feature")],
        )
        for out in result.get_response()["outputs"]:
            assert "data" in out and "binary_data_size" not in (out.get("parameters") or {}), out["name"]
        got = outputs(result, 3)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_http_binary_images_shape_n_by_1(http):
    want = outputs(http.infer(MODEL, [http_images(THREE)]), 3)
    got = outputs(http.infer(MODEL, [http_images(THREE, shape=(3, 1))]), 3)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_http_infer_pixels(server, http, record_v1_diff):
    from_jpeg = outputs(http.infer(MODEL, [http_images(THREE)]), 3)
    for binary in (True, False):
        result = http.infer(MODEL, [http_pixels(THREE, binary=binary)])
        got = outputs(result, 3)
        for g, w in zip(got, from_jpeg):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
        assert_matches_v1(server, record_v1_diff, got[0], THREE, None, None,
                          f"http pixels binary={binary}")


def test_http_only_some_outputs(http):
    result = http.infer(
        MODEL, [http_images(THREE)],
        outputs=[httpclient.InferRequestedOutput("feature")],
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["feature"], names
    assert result.as_numpy("feature").shape == (3, FEATURE_DIM)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_classification_extension(proto, http, grpc, model_info):
    client = client_of(proto, http, grpc)
    plain = client.infer(MODEL, [images_input(proto, THREE)])
    probs = plain.as_numpy("probabilities")
    k = 3
    if proto == "http":
        variants = [
            [httpclient.InferRequestedOutput("probabilities", class_count=k)],
            [httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=k)],
        ]
    else:
        variants = [[grpcclient.InferRequestedOutput("probabilities", class_count=k)]]
    for requested in variants:
        result = client.infer(MODEL, [images_input(proto, THREE)], outputs=requested)
        out = result.get_output("probabilities")
        if proto == "grpc":
            out = {"datatype": out.datatype, "shape": list(out.shape)}
        assert out["datatype"] == "BYTES" and list(out["shape"]) == [3, k], out
        rows = parse_classification(result.as_numpy("probabilities"), 3, k)
        assert_classification_agrees(rows, probs, model_info["labels"], k)
        # The first string is the most probable class of the plain probabilities.
        assert [r[0][1] for r in rows] == [int(np.argmax(p)) for p in probs]


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize(
    "rule,prior",
    [("vmf", "train"), ("linear", "uniform"), ("proco", "train"),
     ("ensemble", "1,1,1,1,1,1,1,1,1,3")],
)
def test_rule_and_prior_parameters_match_v1(proto, rule, prior, http, grpc, server, model_info,
                                            version, record_v1_diff):
    client = client_of(proto, http, grpc)
    result = client.infer(MODEL, [images_input(proto, THREE)],
                          parameters={"rule": rule, "prior": prior})
    probs, logits, feature = outputs(result, 3)
    params = response_parameters(proto, result)
    assert params.get("rule") == rule, params
    assert params.get("prototypes_version") == version, params
    assert "prior" in params, params
    if prior in ("uniform", "train"):
        assert params["prior"] == prior, params
    t = model_info["temperatures"][rule]
    assert math.isclose(float(params["temperature"]), t, rel_tol=1e-12), (params, t)
    assert_matches_v1(server, record_v1_diff, probs, THREE, rule, prior, proto)
    assert_matches_reference(version, logits, feature, probs, THREE, rule, prior)
    # probabilities = softmax(logits / T + log prior): the logits are the rule's balanced
    # logits before temperature and prior.
    if prior == "uniform":
        q = np.full(CLASSES, 1.0 / CLASSES)
    elif prior == "train":
        q = np.asarray(model_info["train_prior"], dtype=np.float64)
    else:
        q = np.asarray([float(w) for w in prior.split(",")])
    q = q / q.sum()
    want = softmax(logits.astype(np.float64) / t + np.log(q))
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_every_fixture_every_rule_matches_v1(proto, http, grpc, server, version, record_v1_diff):
    """All 40 parity fixtures in one request per rule and prior, against /v1 one by one."""
    client = client_of(proto, http, grpc)
    files = [i["file"] for i in IMAGES]
    for rule in RULES:
        for prior in ("uniform", "train"):
            result = client.infer(MODEL, [images_input(proto, files)],
                                  parameters={"rule": rule, "prior": prior})
            probs, logits, feature = outputs(result, len(files))
            assert_matches_v1(server, record_v1_diff, probs, files, rule, prior,
                              f"{proto} all fixtures")
            assert_matches_reference(version, logits, feature, probs, files, rule, prior)


def test_grpc_infer_images(server, grpc, http, model_info, version, record_v1_diff):
    result = grpc.infer(MODEL, [grpc_images(THREE)], request_id="oip-grpc-1")
    probs, logits, feature = outputs(result, 3)
    assert response_model("grpc", result) == (MODEL, version, "oip-grpc-1")
    params = response_parameters("grpc", result)
    rule, prior = model_info["default_rule"], model_info["default_prior"]
    assert params.get("prototypes_version") == version, params
    assert params.get("rule") == rule and params.get("prior") == prior, params
    assert_matches_v1(server, record_v1_diff, probs, THREE, None, None, "grpc")
    # The same answers as REST.
    rest = outputs(http.infer(MODEL, [http_images(THREE)]), 3)
    for g, w in zip((probs, logits, feature), rest):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    # [N,1] and an explicit version.
    again = grpc.infer(MODEL, [grpc_images(THREE, shape=(3, 1))], model_version=version)
    np.testing.assert_allclose(outputs(again, 3)[0], probs, rtol=0, atol=1e-6)


def test_grpc_infer_pixels(grpc, server, record_v1_diff):
    from_jpeg = outputs(grpc.infer(MODEL, [grpc_images(THREE)]), 3)
    got = outputs(grpc.infer(MODEL, [grpc_pixels(THREE)]), 3)
    for g, w in zip(got, from_jpeg):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    assert_matches_v1(server, record_v1_diff, got[0], THREE, None, None, "grpc pixels")


def test_grpc_only_some_outputs(grpc):
    result = grpc.infer(MODEL, [grpc_images(THREE)],
                        outputs=[grpcclient.InferRequestedOutput("logits")])
    names = [o.name for o in result.get_response().outputs]
    assert names == ["logits"], names
    assert result.as_numpy("logits").shape == (3, CLASSES)


# ---------------------------------------------------------------------------------------------
# Errors: each raises InferenceServerException, and the server still answers afterwards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_unknown_model_is_not_found(proto, http, grpc, server):
    client = client_of(proto, http, grpc)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("no-such-model", [images_input(proto, THREE[:1])])
    assert_error(excinfo, proto, 404, "NOT_FOUND", re.compile(r"no-such-model|not found|unknown", re.I))
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_unknown_model_version_is_not_found(proto, http, grpc, server):
    client = client_of(proto, http, grpc)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(MODEL, [images_input(proto, THREE[:1])], model_version="no-such-version")
    assert_error(excinfo, proto, 404, "NOT_FOUND")
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_wrong_datatype_is_invalid(proto, http, grpc, server):
    mod = httpclient if proto == "http" else grpcclient
    inp = mod.InferInput("image", [1], "INT32")
    inp.set_data_from_numpy(np.array([7], dtype=np.int32))
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [inp])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", re.compile(r"INT32|BYTES|datatype", re.I))
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_wrong_shape_is_invalid(proto, http, grpc, server):
    mod = httpclient if proto == "http" else grpcclient
    arr = np.zeros((1, 3, 16, 16), dtype=np.float32)
    inp = mod.InferInput("pixels", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [inp])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", re.compile(r"shape|16|32", re.I))
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_unknown_input_name_is_invalid(proto, http, grpc, server):
    mod = httpclient if proto == "http" else grpcclient
    arr = np.array([jpeg(THREE[0])], dtype=np.object_)
    inp = mod.InferInput("picture", [1], "BYTES")
    inp.set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [inp])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", re.compile(r"picture|input", re.I))
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_two_inputs_are_invalid(proto, http, grpc, server):
    pix = http_pixels(THREE[:1]) if proto == "http" else grpc_pixels(THREE[:1])
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [images_input(proto, THREE[:1]), pix])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT")
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_unknown_output_is_invalid(proto, http, grpc, server):
    mod = httpclient if proto == "http" else grpcclient
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(
            MODEL, [images_input(proto, THREE[:1])],
            outputs=[mod.InferRequestedOutput("embedding_of_nothing")],
        )
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", re.compile(r"embedding_of_nothing|output", re.I))
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("params", [{"rule": "no-such-rule"}, {"prior": "1,2,3"},
                                    {"prior": "no-such-prior"}])
def test_bad_parameters_are_invalid(proto, params, http, grpc, server):
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [images_input(proto, THREE[:1])],
                                           parameters=params)
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT")
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_corrupt_image_is_invalid_with_its_index(proto, http, grpc, server):
    blobs = [jpeg(THREE[0]), b"this is not an image at all", jpeg(THREE[2])]
    if proto == "http":
        arr = np.array(blobs, dtype=np.object_)
        inp = httpclient.InferInput("image", [3], "BYTES")
        inp.set_data_from_numpy(arr)
    else:
        inp = grpc_images(None, blobs=blobs)
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [inp])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", re.compile(r"(?<![0-9.])1(?![0-9.])"))
    assert_still_serving(proto, http, grpc, server)


def test_http_json_image_not_base64_is_invalid(http, server):
    # A JSON element that is not base64: 400, with the element's index.
    inp = httpclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(
        np.array([base64.b64encode(jpeg(THREE[0])), b"%%% not base64 %%%"], dtype=np.object_),
        binary_data=False,
    )
    with pytest.raises(InferenceServerException) as excinfo:
        http.infer(MODEL, [inp])
    assert_error(excinfo, "http", 400, None, re.compile(r"(?<![0-9.])1(?![0-9.])"))
    assert_still_serving("http", http, None, server)


def test_http_errors_are_json_objects(server):
    """Raw REST error bodies are {"error": "<message>"} (what tritonclient parses)."""
    request = urllib.request.Request(
        server.base + f"/v2/models/{MODEL}/infer",
        data=json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "INT32",
                                     "data": [1]}]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=60)
        pytest.fail("an INT32 image was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        body = json.loads(e.read())
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    status, body = server.get("/v2/models/no-such-model")
    assert status == 404 and isinstance(body, dict) and isinstance(body.get("error"), str), body


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("kind", ["class", "marginal"])
def test_prediction_sets_and_abstention_match_v1(proto, kind, http, grpc, server, model_info):
    """coverage/set/abstain_below as request parameters: BOOL outputs equal to /v1's answers."""
    client = client_of(proto, http, grpc)
    files = [i["file"] for i in IMAGES[:12]]
    mod = httpclient if proto == "http" else grpcclient
    result = client.infer(
        MODEL, [images_input(proto, files)],
        outputs=[mod.InferRequestedOutput("prediction_set"), mod.InferRequestedOutput("abstained"),
                 mod.InferRequestedOutput("probabilities")],
        parameters={"rule": "proco", "coverage": 0.9, "set": kind, "abstain_below": 0.8},
    )
    member = result.as_numpy("prediction_set")
    abstained = result.as_numpy("abstained")
    assert member.dtype == np.bool_ and member.shape == (len(files), CLASSES), member
    assert abstained.dtype == np.bool_ and abstained.shape == (len(files),), abstained
    params = response_parameters(proto, result)
    assert float(params["coverage"]) == 0.9 and params["set"] == kind, params
    labels = model_info["labels"]
    for i, f in enumerate(files):
        query = urllib.parse.urlencode(
            {"rule": "proco", "coverage": "0.9", "set": kind, "abstain_below": "0.8"})
        request = urllib.request.Request(
            server.base + "/v1/classify?" + query, data=jpeg(f),
            headers={"Content-Type": "image/jpeg"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            v1 = json.load(r)
        want = sorted(p["index"] for p in v1["prediction_set"]["labels"])
        assert sorted(np.flatnonzero(member[i]).tolist()) == want, (f, v1)
        assert bool(abstained[i]) == v1["abstained"], (f, v1)
        assert labels[int(np.argmax(result.as_numpy("probabilities")[i]))] == v1["predictions"][0]["label"]


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("params,needle", [
    ({"coverage": 1.5}, "between 0 and 1"),
    ({"coverage": 0.995}, "needs at least 199"),
    ({"coverage": 0.9, "set": "mondrian"}, "unknown set kind"),
    ({"set": "class"}, "coverage"),
    ({"abstain_below": 3.0}, "between 0 and 1"),
])
def test_bad_decision_parameters_are_invalid(proto, params, needle, http, grpc, server):
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(MODEL, [images_input(proto, THREE[:1])],
                                           parameters=params)
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", needle)
    assert_still_serving(proto, http, grpc, server)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_prediction_set_output_needs_coverage(proto, http, grpc, server):
    mod = httpclient if proto == "http" else grpcclient
    with pytest.raises(InferenceServerException) as excinfo:
        client_of(proto, http, grpc).infer(
            MODEL, [images_input(proto, THREE[:1])],
            outputs=[mod.InferRequestedOutput("prediction_set")])
    assert_error(excinfo, proto, 400, "INVALID_ARGUMENT", "coverage")
