#!/usr/bin/env python3
"""A stand-in OTLP/HTTP trace receiver for benchmarks: answers every POST to /v1/traces with 200
and counts the requests and bytes received, so that the server's exporter has somewhere to send.
It does not decode the spans (tests/server_traces.rs and tests/oip/test_traces.py check those).

Usage: python3 scripts/otlp_sink.py PORT     (prints "requests bytes" on SIGTERM or Ctrl-C)
Standard library only.
"""
import http.server
import os
import signal
import sys

received = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        received["requests"] += 1
        received["bytes"] += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(*_):
        print(received["requests"], received["bytes"], flush=True)
        os._exit(0)  # at once: serve_forever would otherwise keep the port

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
