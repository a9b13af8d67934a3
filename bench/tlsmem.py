"""What one idle TLS connection costs in a gevent process (RSS per connection, from /proc).

    python3 -m bench.tlsmem [COUNT]

Two processes per case: a gevent TLS server holding COUNT accepted connections and a gevent
client holding COUNT connections to it; each reports its own VmRSS growth per connection.
Cases: plain; the server's side with a greenlet blocked in recv on each connection (as the
relay's pumps are); the server sending no TLS 1.3 session tickets (Dovecot and Office 365 send
two, and the relay's upstream side keeps them). This is how bench/analysis.md splits the
relay's memory per session.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile


def _serve(cert: str, key: str, count: int, options: str) -> None:
    from gevent import monkey
    monkey.patch_all()
    import gc
    import os
    import socket
    import ssl

    import gevent

    from bench.env import rss_kib
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if "notickets" in options:
        context.num_tickets = 0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1000)
    print(listener.getsockname()[1], flush=True)
    held = []

    def handshake(sock):
        tls = context.wrap_socket(sock, server_side=True)
        tls.sendall(b"hi\r\n")
        held.append(tls)
        if "recv" in options:
            try:
                tls.recv(16384)
            except OSError:
                pass

    def accept():
        while True:
            sock, _ = listener.accept()
            gevent.spawn(handshake, sock)

    gevent.spawn(accept)
    while len(held) < 10:
        gevent.sleep(0.05)
    gevent.sleep(0.5)
    gc.collect()
    before = rss_kib(os.getpid())
    while len(held) < count + 10:
        gevent.sleep(0.05)
    gevent.sleep(1)
    gc.collect()
    print(f"{(rss_kib(os.getpid()) - before) / count:.1f}", flush=True)
    gevent.sleep(5)


def _connect(ca_file: str, port: int, count: int) -> None:
    from gevent import monkey
    monkey.patch_all()
    import gc
    import os
    import socket
    import ssl

    import gevent
    from gevent.pool import Pool

    from bench.env import rss_kib
    context = ssl.create_default_context(cafile=ca_file)
    held = []

    def connect():
        tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        tls.recv(10)   # the greeting; TLS 1.3 session tickets arrive with it
        held.append(tls)

    for _ in range(10):
        connect()
    gevent.sleep(0.5)
    gc.collect()
    before = rss_kib(os.getpid())
    pool = Pool(20)
    for _ in range(count):
        pool.spawn(connect)
    pool.join()
    gevent.sleep(1)
    gc.collect()
    print(f"{(rss_kib(os.getpid()) - before) / count:.1f}", flush=True)
    gevent.sleep(5)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--connect":
        _connect(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    from tests.bed.certs import CertAuthority
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    directory = tempfile.mkdtemp(prefix="bench-tlsmem-")
    authority = CertAuthority(directory)
    cert, key = authority.issue_cert(directory)
    print(f"KiB of RSS per idle TLS 1.3 connection, {count} connections, gevent, RSA-2048 certificate")
    for label, options in (("plain", "none"), ("server greenlet blocked in recv", "recv"),
                           ("server sends no session tickets", "notickets")):
        server = subprocess.Popen([sys.executable, "-m", "bench.tlsmem", "--serve", cert, key, str(count), options],
                                  stdout=subprocess.PIPE, text=True)
        port = server.stdout.readline().strip()
        client = subprocess.Popen([sys.executable, "-m", "bench.tlsmem", "--connect", authority.ca_file, port,
                                   str(count)], stdout=subprocess.PIPE, text=True)
        server_side, client_side = server.stdout.readline().strip(), client.stdout.readline().strip()
        print(f"  {label:34s} server side {server_side:>6} KiB   client side {client_side:>6} KiB")
        for process in (server, client):
            process.kill()
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
