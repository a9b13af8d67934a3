"""A bare gevent TLS forwarder: the floor of any Python+gevent relay on this machine.

    python -m bench.floor LISTEN_PORT CERT KEY UPSTREAM_HOST UPSTREAM_PORT CA_FILE

Accepts TLS, opens TLS to the upstream, then two greenlets copy bytes (recv/sendall), as
relay/pipe.py does, without anything else: no protocol, no login, no journal. Only the
profiling tool (bench/profile.py, way "floor") uses it, to tell what the relay's own code
costs from what Python, gevent, OpenSSL and the loopback cost.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402

import os  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

# Variants for A/B tests (environment): FLOOR_YIELD=N does gevent.sleep(0) after N bytes (1:
# after every chunk, as relay/pipe.py does); FLOOR_RECV_INTO=N reads into a reused N-byte
# buffer; FLOOR_BUFFERS=N sets SO_RCVBUF/SO_SNDBUF as relay/upstream/connection.py does.
YIELD = int(os.environ.get("FLOOR_YIELD") or 0)
RECV_INTO = int(os.environ.get("FLOOR_RECV_INTO") or 0)
BUFFERS = int(os.environ.get("FLOOR_BUFFERS") or 0)


def tune(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if BUFFERS:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFERS)


def main() -> int:
    port, cert, key, host, upstream_port, ca_file = sys.argv[1:7]
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=ca_file)

    def pump(source, target):
        buffer = memoryview(bytearray(RECV_INTO)) if RECV_INTO else None
        since_yield = 0
        try:
            while True:
                if buffer is not None:
                    count = source.recv_into(buffer)
                    if not count:
                        break
                    target.sendall(buffer[:count])
                else:
                    data = source.recv(256 * 1024)
                    if not data:
                        break
                    count = len(data)
                    target.sendall(data)
                if YIELD:
                    since_yield += count
                    if since_yield >= YIELD:
                        since_yield = 0
                        gevent.sleep(0)
        except OSError:
            pass
        try:
            socket.socket.shutdown(target, socket.SHUT_WR)
        except OSError:
            pass

    def handle(client, _address):
        tune(client)
        try:
            client = server_tls.wrap_socket(client, server_side=True)
            raw = socket.create_connection((host, int(upstream_port)))
            tune(raw)
            upstream = client_tls.wrap_socket(raw, server_hostname=host)
        except (OSError, ssl.SSLError):
            client.close()
            return
        gevent.joinall([gevent.spawn(pump, client, upstream), gevent.spawn(pump, upstream, client)])
        client.close()
        upstream.close()

    server = StreamServer(("127.0.0.1", int(port)), handle)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
