"""Helpers to run `hzsyncd run` as a real process: notify socket, waits with deadlines."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment of an hzsyncd child process: this checkout importable, no journal."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("JOURNAL_STREAM", None)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class NotifySocket:
    """A real sd_notify socket, as systemd binds it for a Type=notify service, and read all
    the time, as systemd reads it. A socket nobody reads holds net.unix.max_dgram_qlen
    datagrams (10 by default); the next sd_notify then blocks, and systemd-python holds the GIL
    while it does: the whole daemon stops. A test that only read it now and then hung that way
    once a daemon had pinged its watchdog ten times unread."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self.times: list[float] = []  # time.monotonic() each message came at
        self._arrived = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._drain, name="notify-socket", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            now = time.monotonic()
            with self._arrived:
                for line in data.decode().splitlines():
                    self.messages.append(line)
                    self.times.append(now)
                self._arrived.notify_all()

    def read(self, timeout: float = 0.1) -> list[str]:
        """Every message so far, after waiting up to `timeout` for one more."""
        with self._arrived:
            count = len(self.messages)
            self._arrived.wait_for(lambda: len(self.messages) > count, timeout)
            return list(self.messages)

    def received(self) -> list[tuple[float, str]]:
        """(time.monotonic(), message) of every message so far."""
        with self._arrived:
            return list(zip(self.times, self.messages, strict=True))

    def wait(self, line: str, timeout: float) -> None:
        wait_for(
            lambda: any(m == line or m.startswith(line) for m in self.read()),
            timeout,
            f"{line!r} on the notify socket",
        )

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=5)
        self.sock.close()


class DaemonProcess:
    """`python -m hzsyncd run -c CONFIG` with stderr captured to a file, optionally with a
    command in front (`prefix`, e.g. setpriv)."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ):
        self.log = log
        environ = child_env(**(env or {}))
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", "hzsyncd", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environ,
            )

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float) -> None:
        wait_for(lambda: text in self.output(), timeout, f"{text!r} in the daemon's log")

    def stacks(self) -> str:
        """Every thread's stack (SIGUSR1, faulthandler), for a test that finds it stuck."""
        if self.proc.poll() is not None:
            return f"(exited {self.proc.returncode})"
        before = len(self.output())
        self.proc.send_signal(signal.SIGUSR1)
        try:
            wait_for(lambda: "most recent call first" in self.output()[before:], 5, "stacks")
        except AssertionError:
            return "(no stacks printed)"
        return self.output()[before:]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_ready(
    config: Path, log: Path, prefix: list[str] | None = None, **env: str
) -> DaemonProcess:
    """`hzsyncd run`, returned once it has sent READY=1 (its notify socket is then closed: later
    notifications fail at once, and the daemon logs that once)."""
    notify = NotifySocket(Path(tempfile.mkdtemp(prefix="hz")) / "n.sock")
    try:
        daemon = DaemonProcess(config, log, {**env, "NOTIFY_SOCKET": str(notify.path)}, prefix)
        try:
            notify.wait("READY=1", 20)
        except AssertionError:
            daemon.kill()
            raise AssertionError(f"daemon not ready; log:\n{daemon.output()[-3000:]}") from None
    finally:
        notify.close()
        shutil.rmtree(notify.path.parent)
    return daemon
