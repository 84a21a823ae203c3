"""Loopback ports for the servers and process groups the factory starts on one machine."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port nothing listens on now. The OS hands out each such port in turn, so another
    process asking at the same moment gets another one; a server given it binds it a moment later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
