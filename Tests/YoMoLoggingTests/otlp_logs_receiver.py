#!/usr/bin/env python3
"""A tiny OTLP/HTTP logs receiver for the YoMoLogging tests.

Decodes every POST /v1/logs body with the official opentelemetry-proto package
and appends one JSON line per log record to --out:
  {"trace_id": "...", "span_id": "...", "flags": 1, "severity_number": 9,
   "severity_text": "INFO", "body": "...", "attributes": {...},
   "scope": "label", "resource": {...}, "content_type": "application/x-protobuf"}
A line {"rejected_with": 503} records each request refused by --fail-first.
A failed TLS handshake (--tls-cert, see otlp_receiver.py) adds {"type": "tls_error", ...}.
Writes the bound port to --port-file once listening.
"""
import argparse
import gzip
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

# Attribute values are read exactly as the tracing tests' receiver reads them
# (no bytecode cache: it would land in a SwiftPM test target's folder).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "YoMoTracingTests"))
from otlp_receiver import add_tls_arguments, any_value, attributes, wrap_tls  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-first", type=int, default=0,
                        help="answer this many requests with 503 and Retry-After: 0 first")
    add_tls_arguments(parser)  # --tls-cert, --tls-key, --tls-client-ca: see otlp_receiver.py
    args = parser.parse_args()
    failures = {"left": args.fail_first}
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                fail = failures["left"] > 0
                failures["left"] -= 1 if fail else 0
            if fail:
                out.write(json.dumps({"rejected_with": 503}) + "\n")
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/logs":
                self.send_response(404)
                self.end_headers()
                return
            request = logs_service_pb2.ExportLogsServiceRequest()
            request.ParseFromString(body)
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        out.write(json.dumps({
                            "trace_id": record.trace_id.hex(),
                            "span_id": record.span_id.hex(),
                            "flags": record.flags,
                            "time_unix_nano": record.time_unix_nano,
                            "severity_number": record.severity_number,
                            "severity_text": record.severity_text,
                            "body": any_value(record.body),
                            "attributes": attributes(record.attributes),
                            "scope": scope_logs.scope.name,
                            "resource": resource,
                            "content_type": self.headers.get("Content-Type"),
                            "content_encoding": self.headers.get("Content-Encoding"),
                        }) + "\n")
            response = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

    # Exit when the test closes our stdin (or dies), so no receiver outlives its test.
    def watch_stdin():
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def write(record):
        with lock:
            out.write(json.dumps(record) + "\n")

    wrap_tls(server, args, write)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
