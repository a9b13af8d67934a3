"""Binding the listening sockets; the master holds them so workers can come and go."""

from __future__ import annotations

import socket
from typing import Dict, Iterable, Tuple

from relay.config.models import Listener

Address = Tuple[str, int]


class BindError(Exception):
    def __init__(self, listener: Listener, exc: OSError):
        self.listener = listener
        super().__init__(f"cannot listen on {listener.address} ({listener.protocol}): "
                         f"{exc.strerror or exc}")


def backlog() -> int:
    # The kernel silently caps listen() at net.core.somaxconn; ask for all of it.
    try:
        with open("/proc/sys/net/core/somaxconn") as handle:
            return max(socket.SOMAXCONN, int(handle.read().strip()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


def bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # [::] must not also grab 0.0.0.0's port: that is another listener's business.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(backlog())
    except OSError as exc:
        sock.close()
        raise BindError(listener, exc) from exc
    return sock


def key(listener: Listener) -> Address:
    return (listener.host, listener.port)


def bind_all(listeners: Iterable[Listener], reuse: Dict[Address, socket.socket]
             ) -> Dict[Address, socket.socket]:
    """Sockets for `listeners`: taken from `reuse` where the address is unchanged, else bound.

    All or nothing: on a BindError the sockets bound here are closed again.
    """
    sockets: Dict[Address, socket.socket] = {}
    try:
        for listener in listeners:
            address = key(listener)
            sockets[address] = reuse.get(address) or bind(listener)
    except BindError:
        close_unless(sockets, reuse)
        raise
    return sockets


def close_unless(sockets: Dict[Address, socket.socket], keep: Dict[Address, socket.socket]) -> None:
    """Close the sockets in `sockets` that are not also in `keep`."""
    kept = {id(sock) for sock in keep.values()}
    for sock in sockets.values():
        if id(sock) not in kept:
            sock.close()
