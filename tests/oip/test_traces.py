"""Traces with the real Triton clients: a W3C `traceparent` sent by `tritonclient.grpc` (metadata)
and by `tritonclient.http` (a header) makes the server's request span a child of the caller's,
in the caller's trace, with the stages of the request as its children. The spans are received
by an OTLP/HTTP receiver built here from the official definitions (`opentelemetry-proto`)."""

import http.server
import os
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from test_triton_client import MODEL, THREE, Server, grpc_images, http_images

CALLER_SPAN = "00f067aa0ba902b7"
STAGES = {"decode", "queue", "inference", "posterior", "response"}


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def trace(self, trace_id, names, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                mine = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if names <= {s.name for s in mine}:
                return mine
            assert time.monotonic() < deadline, (trace_id, sorted(s.name for s in mine))
            time.sleep(0.05)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        assert self.path == "/v1/traces", self.path
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def traced():
    receiver = Receiver()
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    server = Server(["--otlp-endpoint", receiver.url])
    try:
        yield server, receiver
    finally:
        server.stop()
        receiver.shutdown()
        os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)


def check_child_of_caller(receiver, trace_id, name):
    spans = receiver.trace(trace_id, {name} | STAGES)
    [request] = [s for s in spans if s.name == name]
    assert request.parent_span_id.hex() == CALLER_SPAN
    for stage in [s for s in spans if s.name in STAGES]:
        assert stage.parent_span_id == request.span_id, stage.name
    return request


def test_grpc_traceparent_metadata_joins_the_callers_trace(traced):
    server, receiver = traced
    trace_id = "a" * 31 + "1"
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    client.infer(MODEL, [grpc_images(THREE[:1])],
                 headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
    client.close()
    request = check_child_of_caller(receiver, trace_id, "inference.GRPCInferenceService/ModelInfer")
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["rpc.system"].string_value == "grpc"
    assert attributes["rpc.grpc.status_code"].int_value == 0


def test_http_traceparent_header_joins_the_callers_trace(traced):
    server, receiver = traced
    trace_id = "b" * 31 + "2"
    client = httpclient.InferenceServerClient(server.http_addr)
    client.infer(MODEL, [http_images(THREE[:1])],
                 headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
    client.close()
    request = check_child_of_caller(receiver, trace_id, "POST /v2/models/{name}/infer")
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["http.response.status_code"].int_value == 200
