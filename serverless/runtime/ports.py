"""Free TCP ports for the servers the platform, annotate-folder, the scripts and the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, below the kernel's range for outgoing connections: a port
    from that range (what binding port 0 gives) can be taken by any connection made between the
    choice and the server's bind, which on a busy machine happened (a processor then failed to
    start, uvicorn's exit code 3)."""
    try:
        highest = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        highest = 32768  # Linux's default start of that range
    for port in random.sample(range(LOWEST, highest), min(100, highest - LOWEST)):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on {host} between {LOWEST} and {highest}")
