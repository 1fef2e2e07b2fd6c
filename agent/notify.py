"""systemd's notify protocol: newline-separated KEY=VALUE datagrams to $NOTIFY_SOCKET.

A few lines instead of libsystemd. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Tells systemd the agent is ready, alive, reloading or stopping."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        # An abstract socket is named with a leading "@", sent as a NUL byte.
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog = watchdog_usec / 1e6 if watchdog_usec else None  # seconds, or no watchdog
        self.sent = 0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """The socket and watchdog systemd gave this process (WATCHDOG_PID, when set, must be
        ours: a child would otherwise ping for its parent)."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = usec.isdigit() and (not pid or pid == str(os.getpid()))
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=int(usec) if mine else None)

    def send(self, *fields: str) -> bool:
        """Send `fields` ("READY=1", "STATUS=...") in one datagram; False when not under systemd
        or when the socket is gone (systemd restarting): the agent goes on either way."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        self.sent += 1
        return True
