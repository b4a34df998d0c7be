"""Free-port picking on loopback."""

from __future__ import annotations

import socket

from stack.ports import LOOPBACK, free_port, is_listening


def test_free_port_can_be_bound_and_is_then_listening() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert not is_listening(LOOPBACK, port)
    with socket.socket() as server:
        server.bind((LOOPBACK, port))
        server.listen()
        assert is_listening(LOOPBACK, port)
