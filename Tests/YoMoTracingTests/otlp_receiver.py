#!/usr/bin/env python3
"""A tiny OTLP/HTTP receiver for the YoMoTracing tests and benchmark.

Decodes every POST /v1/traces body with the official opentelemetry-proto
package and appends what it received as JSON lines to --out:
  {"type": "request", "status": 200, "spans": 3, "headers": {...}, "time": ...}
  {"type": "span", "trace_id": "...", "name": "...", "attributes": {...}, ...}
POST /v1/metrics bodies are decoded too, a line per metric:
  {"type": "metric", "name": "...", "unit": "...", "kind": "sum|gauge|histogram",
   "temporality": 2, "monotonic": true, "points": [...], "resource": {...}}
Other paths (/v1/logs) are answered 200 and only counted.
Writes the bound port to --port-file once listening (port 0 = a free port).

Collector faults, for the shutdown tests and Benchmarks/fault-shutdown.sh:
  --status 503 --retry-after 30   answer every POST with 503 (any signal; bodies
                                  of failed requests are not decoded)
  --fault blackhole               accept TCP, read, never answer
  --fail-first 1 --then-hang      answer the first request 503, read the later
                                  ones and never answer them (written as status 0)
  --fault refused                 hold a bound port without listening (connect
                                  gets ECONNREFUSED, and no one else takes it)

TLS, for the exporter's certificate tests:
  --tls-cert server.pem --tls-key server.key   serve HTTPS
  --tls-client-ca ca.pem                       and demand a client certificate
                                               signed by that CA
  A failed handshake is written as {"type": "tls_error", "error": "..."}.
  --echo-auth                     put the Authorization header received into the
                                  body of a refusal (a collector that echoes it)

  otlp_receiver.py --make-certificates DIR   writes, with certtool (gnutls-bin):
    ca.pem/.key, a server certificate for localhost and 127.0.0.1 (server.pem/.key)
    and a client certificate (client.pem/.key) signed by it, and an unrelated
    other-ca.pem/.key; then exits. Both test targets use it.
"""
import argparse
import gzip
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def any_value(value):
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None


def attributes(key_values):
    return {kv.key: any_value(kv.value) for kv in key_values}


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.requests = 0
        self.out = open(args.out, "a", buffering=1)

    def write(self, record):
        with self.lock:
            self.out.write(json.dumps(record) + "\n")


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with state.lock:
                state.requests += 1
                number = state.requests
            args = state.args
            status, retry_after = 200, None
            if args.status:
                status, retry_after = args.status, args.retry_after
            elif number <= args.fail_first:
                status = args.fail_status
                retry_after = args.retry_after
            elif args.then_hang:
                state.write({"type": "request", "number": number, "status": 0, "spans": -1,
                             "path": self.path, "time": time.time(), "headers": {}})
                threading.Event().wait()
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if not self.path.endswith("/v1/traces"):
                self.other_signal(body, number, status, retry_after)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            count = -1
            if status == 200 or not args.status:
                request.ParseFromString(body)
                count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            state.write({
                "type": "request", "number": number, "status": status, "spans": count,
                "path": self.path, "time": time.time(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            })
            if status == 200 and not args.count_only:
                for rs in request.resource_spans:
                    resource = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            state.write({
                                "type": "span",
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "trace_state": span.trace_state,
                                "flags": span.flags,
                                "name": span.name,
                                "kind": span.kind,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "attributes": attributes(span.attributes),
                                "dropped_attributes_count": span.dropped_attributes_count,
                                "events": [{"name": e.name, "time": e.time_unix_nano,
                                            "attributes": attributes(e.attributes)} for e in span.events],
                                "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                                          for l in span.links],
                                "status": {"code": span.status.code, "message": span.status.message},
                                "scope": {"name": ss.scope.name, "version": ss.scope.version},
                                "resource": resource,
                            })
            response = trace_service_pb2.ExportTraceServiceResponse()
            if status == 200 and args.partial_reject:
                response.partial_success.rejected_spans = args.partial_reject
                response.partial_success.error_message = "test rejection"
            payload = response.SerializeToString() if status == 200 else b"rejected by test receiver"
            if status != 200 and args.echo_auth:
                payload += b": bad credentials " + self.headers.get("Authorization", "").encode()
            self.reply(status, payload, retry_after)

        def reply(self, status, payload, retry_after):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(payload)

        def other_signal(self, body, number, status, retry_after):
            points = -1
            if self.path.endswith("/v1/metrics") and status == 200:
                request = metrics_service_pb2.ExportMetricsServiceRequest()
                request.ParseFromString(body)
                points = 0
                for rm in request.resource_metrics:
                    resource = attributes(rm.resource.attributes)
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            record = metric_record(metric)
                            points += len(record["points"])
                            record.update({"type": "metric", "scope": sm.scope.name, "resource": resource})
                            state.write(record)
            state.write({
                "type": "request", "number": number, "status": status, "points": points,
                "path": self.path, "time": time.time(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            })
            self.reply(status, b"" if status == 200 else b"rejected by test receiver", retry_after)

    return Handler


def exemplars(point):
    return [{"trace_id": e.trace_id.hex(), "span_id": e.span_id.hex(), "value": e.as_double, "time": e.time_unix_nano}
            for e in point.exemplars]


def metric_record(metric):
    kind = metric.WhichOneof("data")
    record = {"name": metric.name, "unit": metric.unit, "description": metric.description, "kind": kind, "points": []}
    if kind in ("sum", "gauge"):
        data = getattr(metric, kind)
        if kind == "sum":
            record["temporality"] = data.aggregation_temporality
            record["monotonic"] = data.is_monotonic
        for point in data.data_points:
            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            record["points"].append({"attributes": attributes(point.attributes), "value": value,
                                     "start": point.start_time_unix_nano, "time": point.time_unix_nano,
                                     "exemplars": exemplars(point)})
    elif kind == "histogram":
        record["temporality"] = metric.histogram.aggregation_temporality
        for point in metric.histogram.data_points:
            record["points"].append({
                "attributes": attributes(point.attributes), "count": point.count,
                "sum": point.sum if point.HasField("sum") else None,
                "min": point.min if point.HasField("min") else None,
                "max": point.max if point.HasField("max") else None,
                "bucket_counts": list(point.bucket_counts), "explicit_bounds": list(point.explicit_bounds),
                "exemplars": exemplars(point),
                "start": point.start_time_unix_nano, "time": point.time_unix_nano,
            })
    return record


def write_port(port_file, port):
    temporary = port_file + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(str(port))
    os.replace(temporary, port_file)


def run_fault(args):
    """--fault blackhole / refused: no HTTP at all."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    if args.fault == "blackhole":
        listener.listen(64)
    write_port(args.port_file, listener.getsockname()[1])
    held = []
    out = open(args.out, "a", buffering=1)
    while True:
        if args.fault == "refused":
            time.sleep(3600)
            continue
        connection, _ = listener.accept()
        held.append(connection)  # never answered, never closed
        out.write(json.dumps({"type": "connection", "time": time.time()}) + "\n")
        threading.Thread(target=drain, args=(connection,), daemon=True).start()


def drain(connection):
    try:
        while connection.recv(65536):
            pass
    except OSError:
        pass


def make_certificates(directory):
    os.makedirs(directory, exist_ok=True)
    templates = {
        "ca.tmpl": 'cn = "YoMo OTLP Test CA"\nca\ncert_signing_key\nexpiration_days = 30\n',
        "server.tmpl": 'cn = "localhost"\ndns_name = "localhost"\nip_address = "127.0.0.1"\n'
                       "tls_www_server\nsigning_key\nexpiration_days = 30\n",
        "client.tmpl": 'cn = "yomo-otlp-client"\ntls_www_client\nsigning_key\nexpiration_days = 30\n',
    }
    for name, text in templates.items():
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(text)

    def certtool(*arguments):
        subprocess.run(["certtool", *arguments], cwd=directory, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    for name in ["ca", "other-ca", "server", "client"]:
        certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", f"{name}.key")
    for name in ["ca", "other-ca"]:
        certtool("--generate-self-signed", "--load-privkey", f"{name}.key", "--template", "ca.tmpl",
                 "--outfile", f"{name}.pem")
    for name in ["server", "client"]:
        certtool("--generate-certificate", "--load-privkey", f"{name}.key", "--load-ca-certificate", "ca.pem",
                 "--load-ca-privkey", "ca.key", "--template", f"{name}.tmpl", "--outfile", f"{name}.pem")


def linger_close(connection):
    plain = socket.socket(fileno=os.dup(connection.fileno()))
    connection.close()
    try:
        plain.shutdown(socket.SHUT_WR)
        plain.settimeout(2)
        while plain.recv(65536):
            pass
    except OSError:
        pass
    plain.close()


def add_tls_arguments(parser):
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")


def wrap_tls(server, args, write):
    """Serves `server` over TLS when --tls-cert is given; each failed handshake
    is reported through `write` (the tests wait for that line)."""
    if not args.tls_cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.tls_client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    plain_get_request = server.get_request

    def get_request():
        connection, address = plain_get_request()
        connection.settimeout(10)
        try:
            connection.do_handshake()
        except (ssl.SSLError, OSError) as error:
            write({"type": "tls_error", "error": str(error), "time": time.time()})
            # Closing at once, with the client's request unread, would send a
            # TCP reset that can overtake the TLS alert, and the client would
            # see only "connection reset". A collector that lingers lets it read why.
            threading.Thread(target=linger_close, args=(connection,), daemon=True).start()
            raise
        connection.settimeout(None)
        return connection, address

    server.get_request = get_request


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--make-certificates":
        make_certificates(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the mesh test: 0.0.0.0 inside a namespace)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--status", type=int, default=0, help="answer every request with this status")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with --fail-status")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--then-hang", action="store_true", help="after --fail-first, read requests and never answer")
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--partial-reject", type=int, default=0)
    parser.add_argument("--count-only", action="store_true", help="write request lines only (benchmark)")
    parser.add_argument("--fault", choices=["blackhole", "refused"], help="no HTTP: see the module doc")
    parser.add_argument("--echo-auth", action="store_true", help="echo the Authorization header in refusals")
    add_tls_arguments(parser)
    args = parser.parse_args()
    # The parent may have spawned us with signals blocked; let SIGTERM/SIGINT work.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])
    if args.fault:
        try:
            run_fault(args)
        except KeyboardInterrupt:
            pass
        return 0

    state = State(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True
    wrap_tls(server, args, state.write)
    write_port(args.port_file, server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
