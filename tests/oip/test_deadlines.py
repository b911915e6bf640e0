"""Deadlines with the real Triton clients. The server's batcher waits up to 2 s for company, so a
lone request sits queued: `tritonclient.http`'s `timeout` (the OIP `timeout` parameter, in
microseconds) and `tritonclient.grpc`'s `client_timeout` (the `grpc-timeout` header) both end it
with an error well before that, and the server drops the queued images unencoded
(`proco_abandoned_images_total`, and no encoder batch ran)."""

import re
import time
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_triton_client import MODEL, THREE, Server, grpc_images, http_images


@pytest.fixture(scope="module")
def server():
    s = Server(["--max-queue-delay-ms", "2000"])
    try:
        yield s
    finally:
        s.stop()


def sample(server, name):
    text = urllib.request.urlopen(server.base + "/metrics").read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def test_a_deadline_ends_a_queued_request_and_its_images_are_not_encoded(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [http_images(THREE[:1])], timeout=300_000)
    assert time.monotonic() - started < 1.5
    assert "504" in str(e.value) or "deadline" in str(e.value), str(e.value)
    client.close()

    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    with pytest.raises(InferenceServerException) as e:
        grpc.infer(MODEL, [grpc_images(THREE[:1])], client_timeout=0.3)
    assert "DEADLINE_EXCEEDED" in str(e.value) or "Deadline" in str(e.value), str(e.value)
    grpc.close()

    deadline = time.monotonic() + 10
    while sample(server, "proco_abandoned_images_total") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sample(server, "proco_abandoned_images_total") == 2
    assert sample(server, "proco_batch_size_count") == 0, "the encoder ran for abandoned images"
