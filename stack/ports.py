"""Free TCP ports on the loopback interface for the embedded services.

``free_port()`` asks the kernel for an unused port by binding to port 0 and closing the socket
again. That is inherently racy: between the close and the moment the real server binds, any other
process (or an outgoing connection, which draws its source port from the same ephemeral range)
may take the port. The contract for callers is therefore:

1. pick a port with ``free_port()`` and hand it to the server;
2. if the server fails to bind ("Address already in use" in its log, or it exits at once), pick a
   new port and try again, at most ``PORT_ATTEMPTS`` times in total;
3. only then report the service as unavailable.

``stack.embedded_redis`` follows this loop. The embedded PostgreSQL needs no port at all (it
listens on a unix socket only), so it never races.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"
"""Embedded services listen on loopback only: the embedded stack is for one developer machine."""

PORT_ATTEMPTS = 3
"""How many fresh ports a caller tries before giving up; a lost race twice in a row is rare."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (see the module doc for the race).

    Raises ``OSError`` only if ``host`` is not a local address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port`` right now.

    A readiness probe only: it proves a listener exists, not that it speaks the expected protocol.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
