"""API keys (`api_keys_file`) with the real Triton clients: inference without a key, or with a
wrong one, raises InferenceServerException (HTTP 401, gRPC UNAUTHENTICATED); with the key in
`Authorization: Bearer` (gRPC: the `authorization` metadata) it answers; metadata stays open."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_triton_client import MODEL, THREE, Server, grpc_images, http_images

KEY = "triton-client-key-0123456789"


@pytest.fixture(scope="module")
def server():
    folder = Path(tempfile.mkdtemp(prefix="proco-keys-"))
    (folder / "keys").write_text(f"triton {KEY}\n")
    s = Server(["--api-keys-file", str(folder / "keys")])
    try:
        yield s
    finally:
        s.stop()


def test_http_needs_the_key(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    assert client.get_model_metadata(MODEL)["name"] == MODEL  # metadata is open
    for headers in (None, {"Authorization": "Bearer not-the-key-0123456789"}):
        with pytest.raises(InferenceServerException) as e:
            client.infer(MODEL, [http_images(THREE)], outputs=outputs, headers=headers)
        assert "401" in str(e.value) or "API key" in str(e.value), str(e.value)
    result = client.infer(MODEL, [http_images(THREE)], outputs=outputs,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert np.allclose(result.as_numpy("probabilities").sum(1), 1, atol=1e-5)
    client.close()


def test_grpc_needs_the_key(server):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert client.get_model_metadata(MODEL).name == MODEL
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [grpc_images(THREE)])
    assert "UNAUTHENTICATED" in str(e.value), str(e.value)
    result = client.infer(MODEL, [grpc_images(THREE)], headers={"authorization": f"Bearer {KEY}"})
    assert result.as_numpy("probabilities").shape == (3, 10)
    client.close()
