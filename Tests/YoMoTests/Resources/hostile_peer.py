#!/usr/bin/env python3
"""Hostile YoMo clients over an independent QUIC stack (aioquic), for the
zipper's fault tests.

  hostile_peer.py MODE HOST PORT [COUNT] [WAIT_SECONDS]

opens COUNT connections (default 1) that each misbehave as MODE says, then
waits up to WAIT_SECONDS (default 10) for the zipper to close each one. Prints
one line per connection:

  CLOSED code=0x13 reason=<reason phrase> after=<seconds>
  OPEN after=<seconds>                       (still open when the wait ended)

big-partial(-split) lines end with granted=<bytes>: how far into its stream the
zipper's flow control let the peer send.

Modes:
  mute        QUIC handshake, then nothing: no stream is ever opened
  partial     opens the stream and sends 5 bytes of a handshake frame
  oversized   a first frame whose header claims 15 MiB, then 256 KiB of it
  garbage     random bytes that are not a y3 frame
  data-first  a well-formed DataFrame instead of the handshake
  long-name   a handshake whose name is 1000 bytes (under the frame limit)
  huge-name   a handshake whose name is 1 MiB
  big-partial a handshake, then all but 1000 bytes of a 6 MiB DataFrame
              (BIG_PARTIAL_BYTES, for benchmarks), and
              then only PINGs (every 0.5 s, so the idle timeout never ends it)
  big-partial-split
              the same, the DataFrame's header cut after its first 2 bytes
              and the rest sent 0.3 s later (the zipper reads it in two pieces)
  unfinished  takes a Retry (it proves its address) and then drops every
              datagram of 200 bytes or more: its QUIC handshake never
              finishes, and holds its slot until the zipper gives up on it
ALPN "yomo", TLS 1.3, no certificate verification.

LOCAL_ADDRESSES (comma-separated, one per connection, IPv4 or IPv6): the
address each connection sends from, so that one process looks like several
hosts (addresses the host has; a zipper on a dual-stack socket sees the IPv4
ones IPv4-mapped).
"""
import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import sys
import time

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.connection import QuicConnection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated


def length(n):
    """y3 PVarInt32 of a non-negative length: 7-bit groups, sign bit 0x40 in the first."""
    groups = 1
    while n >= 1 << (7 * groups - 1):
        groups += 1
    out = bytearray()
    for i in range(groups - 1, -1, -1):
        byte = (n >> (7 * i)) & 0x7F
        out.append(byte | (0x80 if i > 0 else 0))
    return bytes(out)


def primitive(seq, value):
    return bytes([seq]) + length(len(value)) + value


def node(frame_type, children):
    body = b"".join(children)
    return bytes([0x80 | frame_type]) + length(len(body)) + body


def handshake(name):
    return node(0x31, [
        primitive(0x01, name),
        primitive(0x03, b"hostile-0"),
        primitive(0x02, bytes([0x5F])),
        primitive(0x06, b""),
        primitive(0x04, b""),
        primitive(0x05, b""),
        primitive(0x07, b"2024-01-03"),
        primitive(0x09, b""),
        primitive(0x08, b""),
    ])


def first_bytes(mode):
    if mode == "partial":
        return handshake(b"partial")[:5]
    if mode == "oversized":
        claimed = 15 << 20
        return bytes([0x80 | 0x3F]) + length(claimed) + os.urandom(256 << 10)
    if mode == "garbage":
        return b"\xff\x00" + os.urandom(64)
    if mode == "data-first":
        return node(0x3F, [primitive(0x01, bytes([0x33])), primitive(0x03, b""), primitive(0x02, b"hello")])
    if mode == "long-name":
        return handshake(b"n" * 1000)
    if mode == "huge-name":
        return handshake(b"n" * (1 << 20))
    if mode.startswith("big-partial"):
        claimed = int(os.environ.get("BIG_PARTIAL_BYTES", 6 << 20))
        return handshake(b"big") + bytes([0x80 | 0x3F]) + length(claimed) + os.urandom(claimed - 1000)
    raise SystemExit(f"unknown mode {mode}")


class Watch(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.terminated = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)


class Unfinished(Watch):
    """Hears Retries and closes (small), never the server's handshake flight."""

    def datagram_received(self, data, addr):
        if len(data) < 200:
            super().datagram_received(data, addr)


def as_ipv6(address):
    """An IPv4 address IPv4-mapped, for a dual-stack socket; IPv6 as it is."""
    parsed = ipaddress.ip_address(address)
    return f"::ffff:{parsed}" if parsed.version == 4 else str(parsed)


@contextlib.asynccontextmanager
async def connect_from(local, host, port, configuration, protocol=Watch, wait_connected=True):
    """aioquic's connect, from the address `local` rather than any."""
    configuration.server_name = configuration.server_name or host
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((as_ipv6(local), 0, 0, 0))
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(lambda: protocol(QuicConnection(configuration=configuration)), sock=sock)
    try:
        client.connect((as_ipv6(host), port, 0, 0), transmit=True)
        if wait_connected:
            await client.wait_connected()
        yield client
    finally:
        client.close()
        await client.wait_closed()
        transport.close()


async def one(mode, host, port, wait, local=None):
    config = QuicConfiguration(is_client=True, alpn_protocols=["yomo"], verify_mode=ssl.CERT_NONE, idle_timeout=60)
    started = time.monotonic()
    protocol, waits = (Unfinished, False) if mode == "unfinished" else (Watch, True)
    opened = connect_from(local, host, port, config, protocol, waits) if local else \
        connect(host, port, configuration=config, create_protocol=protocol, wait_connected=waits)
    async with opened as client:
        stream = None
        if mode not in ("mute", "unfinished"):
            stream = client._quic.get_next_available_stream_id()
            data = first_bytes(mode)
            if mode == "big-partial-split":
                cut = len(handshake(b"big")) + 2
                client._quic.send_stream_data(stream, data[:cut], end_stream=False)
                client.transmit()
                await asyncio.sleep(0.3)
                data = data[cut:]
            client._quic.send_stream_data(stream, data, end_stream=False)
            client.transmit()
        pinging = asyncio.ensure_future(keep_alive(client)) if mode.startswith("big-partial") else None
        granted = ""
        try:
            event = await asyncio.wait_for(asyncio.shield(client.terminated), wait)
            line = f"CLOSED code=0x{event.error_code:x} reason={event.reason_phrase} after={time.monotonic() - started:.2f}"
        except asyncio.TimeoutError:
            line = f"OPEN after={time.monotonic() - started:.2f}"
        if pinging:
            pinging.cancel()
            granted = f" granted={client._quic._streams[stream].max_stream_data_remote}"
        return line + granted


async def keep_alive(client):
    while True:
        await asyncio.sleep(0.5)
        client._quic.send_ping(0)
        client.transmit()


async def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    wait = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    locals_ = [a for a in os.environ.get("LOCAL_ADDRESSES", "").split(",") if a]
    if locals_ and len(locals_) != count:
        raise SystemExit(f"LOCAL_ADDRESSES names {len(locals_)} addresses for {count} connections")
    results = await asyncio.gather(
        *(one(mode, host, port, wait, locals_[i] if locals_ else None) for i in range(count)), return_exceptions=True)
    for result in results:
        print(result if isinstance(result, str) else f"ERROR {result!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
