#!/usr/bin/env python3
"""Independent QUIC peer for YoMoQUIC tests (aioquic).

  server: aioquic_peer.py server CERT KEY [retry] -> prints "PORT <n>", echoes every stream;
                                                  "retry" answers every new connection with a Retry first
  client: aioquic_peer.py client HOST PORT N [big]  -> sends N bytes on one stream, checks the echo,
                                                  prints "OK <n>" (exit 0) or an error (exit 1);
                                                  "big" pads the ClientHello over two Initial
                                                  datagrams (like Go's post-quantum key share)
ALPN "yomo", TLS 1.3, no certificate verification on the client side.
"""
import asyncio
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived


class Echo(QuicConnectionProtocol):
    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            self.transmit()


def pattern(offset, length):
    # Position-dependent bytes so a reordering or a gap is detected. They repeat
    # every 256, so one period is built and copied (byte by byte took ~1.5 s for 16 MiB).
    period = bytes((i * 31 + 7) & 0xFF for i in range(256))
    start = offset % 256
    return (period * (length // 256 + 2))[start:start + length]


async def run_server(cert, key, retry=False):
    config = QuicConfiguration(is_client=False, alpn_protocols=["yomo"], idle_timeout=30)
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Echo, retry=retry)
    port = server._transport.get_extra_info("sockname")[1]
    print(f"PORT {port}", flush=True)
    await asyncio.Future()


async def run_client(host, port, total, big=False):
    alpn = ["yomo"]
    if big:
        # Extra ALPN names the server ignores: a ~2.5 KB ClientHello.
        alpn += ["x" * 200 + str(i) for i in range(12)]
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn, verify_mode=ssl.CERT_NONE, idle_timeout=30)
    async with connect(host, port, configuration=config) as client:
        reader, writer = await client.create_stream()
        chunk = 65536
        block = pattern(0, 256 * chunk)  # period-256 pattern: any 256-aligned slice repeats

        async def send():
            sent = 0
            while sent < total:
                n = min(chunk, total - sent)
                writer.write(block[sent % 256: sent % 256 + n])
                sent += n
                await writer.drain()
            writer.write_eof()

        task = asyncio.ensure_future(send())
        received = 0
        while received < total:
            data = await reader.read(1 << 20)
            if not data:
                break
            expected = block[received % 256: received % 256 + len(data)]
            if data != expected:
                print(f"MISMATCH at {received}", flush=True)
                sys.exit(1)
            received += len(data)
        await task
        if received != total:
            print(f"SHORT {received}", flush=True)
            sys.exit(1)
        print(f"OK {received}", flush=True)
        client.close(error_code=0x13, reason_phrase="done")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "retry"))
    else:
        asyncio.run(run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), len(sys.argv) > 5 and sys.argv[5] == "big"))
