"""The relay's TCP sockets as the kernel sees them (`ss`): which process holds which connection,
in which state, with which timer. Loopback only; the tests run as root, so `ss -p` names the
owner of every socket."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Set, Tuple

import pytest

Address = Tuple[str, int]


@dataclass(frozen=True)
class TcpSocket:
    state: str          # ESTAB, CLOSE-WAIT, FIN-WAIT-2, TIME-WAIT, ...
    local: Address
    peer: Address
    pids: Tuple[int, ...]   # the processes holding it (none once only the kernel has it)
    timer: str              # "keepalive,1min59sec,0", "on,...", "timewait,...", or ""


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def tcp_sockets() -> List[TcpSocket]:
    """Every TCP socket of this machine that is not listening."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("ss is not installed (apt-get install iproute2)")
    output = subprocess.run([ss, "-t", "-n", "-o", "-e", "-p", "-a", "-H"], capture_output=True, text=True,
                            timeout=20, check=True).stdout
    sockets = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] == "LISTEN":
            continue
        rest = " ".join(fields[5:])
        timer = re.search(r"timer:\(([^)]*)\)", rest)
        sockets.append(TcpSocket(
            state=fields[0], local=_address(fields[3]), peer=_address(fields[4]),
            pids=tuple(int(pid) for pid in re.findall(r"pid=(\d+)", rest)),
            timer=timer.group(1) if timer else ""))
    return sockets


def process_group(leader: int) -> Set[int]:
    """The pids in process group `leader` (the relay's master starts a session of its own)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == leader:
            pids.add(int(entry))
    return pids


def relay_sockets(relay, peer: Optional[Address] = None, local: Optional[Address] = None) -> List[TcpSocket]:
    """The sockets the relay's processes hold, optionally only those with this peer / local address."""
    pids = process_group(relay.process.pid)
    return [sock for sock in tcp_sockets() if pids.intersection(sock.pids)
            and (peer is None or sock.peer == peer) and (local is None or sock.local == local)]


def connection(local: Address, peer: Address) -> List[TcpSocket]:
    """Both ends of one loopback connection (either may be gone already)."""
    return [sock for sock in tcp_sockets() if {sock.local, sock.peer} == {local, peer}]
