#!/usr/bin/env python3
"""Hostile HTTP clients for the metrics endpoint's limits (plain sockets).

  hostile_http.py MODE PORT COUNT WAIT_SECONDS

Modes, one line per connection (seconds measured from before the client
connected, or sent its request: never less than the server's own count):

  slow   COUNT connections each send an unfinished request head and wait up to
         WAIT_SECONDS for the server to close them:
           CLOSED after=<seconds> | OPEN after=<seconds>
  idle   COUNT keep-alive connections each get GET /healthz answered, then
         say nothing more:
           ANSWERED status=<code> CLOSED after=<seconds> | ... OPEN after=<seconds>
  garbage  COUNT connections each send bytes that are not HTTP:
           ANSWERED status=<code> CLOSED after=<seconds> | ... OPEN after=<seconds>
  big    one POST /v1/traces whose body is COUNT MiB, sent whole unless the
         server answers first:
           ANSWERED status=<code> CLOSED after=<seconds> | ... OPEN after=<seconds>
  cap    COUNT connections hold unfinished heads; one more asks GET /healthz:
           EXTRA CLOSED unanswered | EXTRA ANSWERED status=<code>
         then one held connection closes and GET /healthz is retried (a fresh
         connection each time) for up to WAIT_SECONDS:
           AFTER-RELEASE ANSWERED status=<code> | AFTER-RELEASE UNANSWERED
"""
import select
import socket
import sys
import time

UNFINISHED = b"GET /metrics HTTP/1.1\r\nHost: hostile\r\nX-Slow: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: hostile\r\n\r\n"


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def wait_closed(sock, since, deadline):
    """Seconds from `since` until the server was seen to close the connection
    (EOF or reset), or None. Seen late, never early: the sockets are waited
    for one after another."""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        if not readable:
            break
        try:
            if not sock.recv(65536):
                return time.monotonic() - since
        except ConnectionResetError:
            return time.monotonic() - since
    return None


def answer(sock):
    """The status of one response read whole (Content-Length), or None if closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return int(head.split(b" ")[1])


def line(closed):
    return f"CLOSED after={closed:.3f}" if closed is not None else "OPEN"


def main():
    mode, port, count, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if mode == "slow":
        # Timed from before each connect: the server's clock for a connection
        # cannot start earlier, so a close is never seen as earlier than it was.
        socks, opened = [], []
        for _ in range(count):
            opened.append(time.monotonic())
            socks.append(connect(port))
        for sock in socks:
            sock.sendall(UNFINISHED)
        deadline = time.monotonic() + wait
        for sock, since in zip(socks, opened):
            print(line(wait_closed(sock, since, deadline)), flush=True)
    elif mode in ("idle", "garbage"):
        socks = [connect(port) for _ in range(count)]
        answers = []
        for sock in socks:
            # Timed from before the request: the server cannot answer earlier.
            since = time.monotonic()
            sock.sendall(HEALTHZ if mode == "idle" else b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
            answers.append((answer(sock), since))
        deadline = time.monotonic() + wait
        for sock, (status, since) in zip(socks, answers):
            print(f"ANSWERED status={status} {line(wait_closed(sock, since, deadline))}", flush=True)
    elif mode == "big":
        sock = connect(port)
        size = count << 20
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: hostile\r\n"
                     b"Content-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % size)
        try:
            sent = 0
            while sent < size:
                sock.sendall(b"\x0a" * min(65536, size - sent))
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed first
        try:
            status = answer(sock)
        except ConnectionResetError:
            status = None
        since = time.monotonic()
        print(f"ANSWERED status={status} {line(wait_closed(sock, since, since + wait))}", flush=True)
    elif mode == "cap":
        held = [connect(port) for _ in range(count)]
        for sock in held:
            sock.sendall(UNFINISHED)
        # Accepted after the held ones: the listen queue is first in, first out.
        extra = connect(port)
        try:
            extra.sendall(HEALTHZ)
            status = answer(extra)
        except (ConnectionResetError, BrokenPipeError):
            status = None
        print("EXTRA CLOSED unanswered" if status is None else f"EXTRA ANSWERED status={status}", flush=True)
        held.pop().close()
        deadline = time.monotonic() + wait
        result = "AFTER-RELEASE UNANSWERED"
        while time.monotonic() < deadline:
            try:
                sock = connect(port)
                sock.sendall(HEALTHZ)
                status = answer(sock)
                sock.close()
            except (ConnectionResetError, BrokenPipeError):
                status = None
            if status is not None:
                result = f"AFTER-RELEASE ANSWERED status={status}"
                break
            time.sleep(0.05)
        print(result, flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
