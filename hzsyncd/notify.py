"""sd_notify for the daemon: READY, STATUS, WATCHDOG, RELOADING and STOPPING to systemd.

    notifier = Notifier()
    notifier.ready("watching 7 tables")
    while running:
        ...
        notifier.watchdog()          # every iteration; sends at most once per watchdog_interval
        notifier.status("3 files pending")
    notifier.stopping()

Without `$NOTIFY_SOCKET` (not started by systemd with Type=notify) every method does nothing.
No method raises: a notification that cannot be delivered is logged once and otherwise ignored,
because losing a status line must never stop the daemon (a missed watchdog ping is systemd's
to judge).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from systemd import daemon

from hzsyncd.logs import event


class Notifier:
    """Notifications to the service manager named by `$NOTIFY_SOCKET`.

    `environ` is read once, here: whether notifications are on and the watchdog interval.
    libsystemd's sd_notify, which delivers them, reads NOTIFY_SOCKET from the process
    environment itself (it handles both a path and an abstract `@name` socket, checked in
    tests/test_notify.py); pass a different mapping only to test the watchdog arithmetic.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.enabled: bool = bool(environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval: float | None = _watchdog_interval(environ) if self.enabled else None
        self._last_status: str | None = None
        self._last_ping = float("-inf")
        self._failed = False

    def ready(self, status: str) -> None:
        """Serving: READY=1 with a status line (sent again after each reload)."""
        line = _one_line(status)
        self._last_status = line
        self._send(f"READY=1\nSTATUS={line}")

    def status(self, status: str) -> None:
        """A one-line state for `systemctl status`; sent only when it changed."""
        line = _one_line(status)
        if line == self._last_status:
            return
        self._last_status = line
        self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        """WATCHDOG=1, at most once per `watchdog_interval`; cheap enough for every iteration."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping < self.watchdog_interval:
            return
        self._last_ping = now
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """RELOADING=1; call ready() when the reload is done."""
        # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 for Type=notify-reload, to
        # tell this reload from an older one; earlier versions ignore the unknown field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """STOPPING=1: shutting down, so systemd waits for the exit (TimeoutStopSec=)."""
        self._send("STOPPING=1")

    def _send(self, state: str) -> None:
        if not self.enabled:
            return
        try:
            daemon.notify(state)
        except (OSError, ValueError) as error:
            # Warn once: a socket that is gone now will stay gone, and a line per loop
            # iteration would flood the log.
            if not self._failed:
                self._failed = True
                event(
                    logging.WARNING, f"sd_notify failed ({error}); further failures are not logged"
                )


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """A quarter of WATCHDOG_USEC in seconds (None when off): sd_watchdog_enabled(3) advises
    half, but with max_in_flight 1 the loop can sit in a call for up to [service] timeout
    between two pings, and a quarter keeps that inside the limit for timeouts up to 3/4 of it.

    WATCHDOG_PID names the process the watchdog is meant for; when it is another one (this
    process was started by the daemon rather than being it), the watchdog is not ours to ping.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 4 / 1_000_000


def _one_line(text: str) -> str:
    # A newline would end the STATUS= assignment and start a new, bogus one.
    return " ".join(text.split())
