"""An HTTP/1.1 server with the manners PlainHTTPClient must cope with.

Connections are served one at a time; each request's body is checked against
its Content-Length, compared with the pattern the test sends (byte i is
i mod 251, so a byte sent twice, lost or out of order shows), and logged. Responses, in order of the requests:
  1. 200 with Content-Length, then the server closes the connection without
     saying so (a kept-alive connection that went stale);
  2. 200 sent in pieces: a 100 Continue first, then a chunked body with a
     chunk extension and a trailer; the connection stays open;
  3. 503, chunked, with Retry-After: 1, on the same connection;
  4. 200 as HTTP/1.0 with no length: the body runs to the end of the connection.
Writes "<port>" to --port-file and one line per request to stdout.
"""
import argparse, socket, sys, time

RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", False),
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", True),
]

def read_request(conn, buffer):
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None, buffer
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    rest = bytearray(rest)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None, b""
        rest += data
    return (head, bytes(rest[:length])), bytes(rest[length:])

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    served = 0
    connection_number = 0
    while served < len(RESPONSES):
        conn, _ = server.accept()
        connection_number += 1
        if connection_number == 1:
            # Slow to read at first: the client's socket buffer fills, so its
            # first request goes out over several sends.
            time.sleep(0.3)
        buffer = b""
        while served < len(RESPONSES):
            request, buffer = read_request(conn, buffer)
            if request is None:
                break
            head, body = request
            first_line = head.split(b"\r\n")[0].decode()
            pattern = (bytes(range(251)) * (len(body) // 251 + 1))[:len(body)]
            verdict = "ok" if body == pattern else "bad"
            print(f"connection={connection_number} request={served + 1} line={first_line} body={len(body)} pattern={verdict}",
                  flush=True)
            response, close_after = RESPONSES[served]
            served += 1
            conn.sendall(response)
            if close_after:
                break
        conn.close()

if __name__ == "__main__":
    main()
