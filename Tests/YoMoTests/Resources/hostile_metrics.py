#!/usr/bin/env python3
"""Hostile /metrics endpoints, for `yomo top`.

  hostile_metrics.py SECONDS

Listens on five ports of 127.0.0.1, prints one line

  PORTS odd=<port> trickle=<port> endless=<port> status=<port> garbage=<port>

and serves each connection until the client closes, for up to SECONDS in all:

  odd      a 200 whose page has NaN, infinite and huge values where `yomo top`
           shows whole numbers, and a service name and clients' names with
           terminal escapes
  trickle  a 200 head, then one byte of page every 100 ms
  endless  a 200 head, then page bytes as fast as the client reads them
  status   a 503
  garbage  bytes that are not HTTP (a terminal escape among them), then a close
"""
import socket
import sys
import threading
import time

ODD_PAGE = (
    b'target_info{service_name="evil\x1b[2J"} 1\n'
    b"yomo_zipper_connections NaN\n"
    b"yomo_client_reconnects_total +Inf\n"
    b"yomo_sdk_spans_dropped_total 1e300\n"
    b'yomo_zipper_routed_messages_total{outcome="delivered"} -Inf\n'
    b'messaging_process_duration_seconds_bucket{le="NaN"} 5\n'
    b'messaging_process_duration_seconds_bucket{le="+Inf"} NaN\n'
    # Clients of a "zipper", for `--clients`: odd values, and names that try escapes.
    b'yomo_zipper_client_smoothed_rtt_seconds{yomo_client_name="c\x1b]0;pwned\x07",yomo_client_id="a"} NaN\n'
    b'yomo_zipper_client_unacknowledged_bytes{yomo_client_name="c\x1b]0;pwned\x07",yomo_client_id="a"} +Inf\n'
    b'yomo_zipper_client_smoothed_rtt_seconds{yomo_client_name="d",yomo_client_id="b\x1b[2J"} 1e300\n'
    b'yomo_zipper_client_unacknowledged_bytes{yomo_client_name="d",yomo_client_id="b\x1b[2J"} NaN\n'
    b'yomo_zipper_client_packets_lost{yomo_client_name="d",yomo_client_id="b\x1b[2J"} -1e308\n'
    b'yomo_zipper_client_smoothed_rtt_seconds{yomo_client_name="e",yomo_client_id="c"} NaN\n'
    b'yomo_zipper_client_unacknowledged_bytes{yomo_client_name="e",yomo_client_id="c"} NaN\n'
)
HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"


def serve(mode, connection):
    try:
        connection.recv(4096)
        if mode == "odd":
            connection.sendall(HEAD + ODD_PAGE)
        elif mode == "trickle":
            connection.sendall(HEAD)
            while True:
                connection.sendall(b"#")
                time.sleep(0.1)
        elif mode == "endless":
            connection.sendall(HEAD)
            chunk = b"# filler\n" * 7000
            while True:
                connection.sendall(chunk)
        elif mode == "status":
            connection.sendall(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
        else:
            connection.sendall(b"\x1b[2J not http at all\r\n\r\n")
    except OSError:
        pass
    finally:
        connection.close()


def listen(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def accept():
        while True:
            connection, _ = server.accept()
            threading.Thread(target=serve, args=(mode, connection), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


modes = ["odd", "trickle", "endless", "status", "garbage"]
ports = {mode: listen(mode) for mode in modes}
print("PORTS " + " ".join(f"{mode}={ports[mode]}" for mode in modes), flush=True)
time.sleep(float(sys.argv[1]))
