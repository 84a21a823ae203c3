"""Loopback ports for the servers and process groups the factory starts on one machine."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port nothing listens on now, for a server or process group that binds it a moment
    later; another process may take it in between (rare: the OS hands out free ports in turn), and the
    bind then fails with "address in use" rather than joining the wrong server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
