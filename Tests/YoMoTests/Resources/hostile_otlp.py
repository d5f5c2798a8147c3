#!/usr/bin/env python3
"""Well-formed OTLP/HTTP trace bodies with hostile content, for `yomo trace-view`.

  hostile_otlp.py PORT DEPTH WAIT_SECONDS

Built with the official opentelemetry-proto package and posted to
http://127.0.0.1:PORT/v1/traces (retried until the receiver listens, for up to
WAIT_SECONDS). The first request holds three traces:

  times  two spans, one starting 2^63 ns after the other, both ending at 0
  max    one span starting and ending at 2^64 - 1 ns
  graph  a chain of DEPTH spans, each the parent of the next, plus a span that
         is its own parent, two spans that are each other's parent, and a
         span whose id repeats the chain's first

The second request is a span whose attribute value nests arrays 5,000 deep
(written by hand: the protobuf package refuses to build it), which protobuf-c
would unpack recursively past the end of its stack. The third, sent once the
others are answered, holds one ordinary span (trace `after`). One line per
request: ANSWERED status=<code>. Then one line per trace that should be drawn:
TRACE <name> <trace id hex> <span count>.
"""
import http.client
import sys
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

port, depth, wait = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
LAST = 2**64 - 1


def trace_id(number):
    return number.to_bytes(16, "big")


def span_id(number):
    return number.to_bytes(8, "big")


def request(traces):
    body = ExportTraceServiceRequest()
    resource = body.resource_spans.add()
    attribute = resource.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "hostile"
    scope = resource.scope_spans.add()
    scope.scope.name = "hostile-otlp"
    for trace, spans in traces:
        for name, span, parent, start, end in spans:
            message = scope.spans.add()
            message.trace_id, message.span_id = trace_id(trace), span_id(span)
            if parent is not None:
                message.parent_span_id = span_id(parent)
            message.name, message.kind = name, 1
            message.start_time_unix_nano, message.end_time_unix_nano = start, end
    return body.SerializeToString()


def varint(number):
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested(levels):
    """A request whose one span's attribute is an array of an array of ... of "x"."""
    inner = field(1, b"x")  # AnyValue.string_value
    length, headers = len(inner), []
    for _ in range(levels):  # AnyValue.array_value (5) holding ArrayValue.values (1)
        values = varint(1 << 3 | 2) + varint(length)
        length += len(values)
        array = varint(5 << 3 | 2) + varint(length)
        length += len(array)
        headers.append(array + values)
    value = b"".join(reversed(headers)) + inner
    span = field(1, trace_id(5)) + field(2, span_id(30)) + field(5, b"deep") + field(9, field(1, b"k") + field(2, value))
    return field(1, field(2, field(2, span)))


def post(body):
    deadline = time.monotonic() + wait
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=wait)
            connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            status = connection.getresponse().status
            connection.close()
            return status
        except (ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                return "none"
            time.sleep(0.05)


times = (1, [("early", 1, None, 0, 0), ("late", 2, None, 2**63, 0)])
maximum = (2, [("at-the-end", 3, None, LAST, LAST)])
chain = [(f"link-{index}", 1000 + index, 1000 + index - 1 if index else None, index, index + 1) for index in range(depth)]
odd = [("own-parent", 10, 10, 5, 6), ("cycle-a", 11, 12, 5, 6), ("cycle-b", 12, 11, 5, 6), ("same-id", 1000, None, 7, 8)]
graph = (3, chain + odd)
after = (4, [("after", 20, None, 1_000, 2_000)])

print(f"ANSWERED status={post(request([times, maximum, graph]))}", flush=True)
print(f"ANSWERED status={post(nested(5000))}", flush=True)
print(f"ANSWERED status={post(request([after]))}", flush=True)
for name, (trace, spans) in [("times", times), ("max", maximum), ("graph", graph), ("after", after)]:
    print(f"TRACE {name} {trace_id(trace).hex()} {len(spans)}", flush=True)
