"""Helpers to run `hzsyncd run` as a real process: notify socket, waits with deadlines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    """A real sd_notify socket, as systemd binds it for a Type=notify service."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def read(self, timeout: float = 0.1) -> list[str]:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(4096)
                self.messages.extend(data.decode().splitlines())
                self.sock.settimeout(0.01)
        except (TimeoutError, BlockingIOError):
            pass
        return self.messages

    def wait(self, line: str, timeout: float) -> None:
        wait_for(
            lambda: any(m == line or m.startswith(line) for m in self.read()),
            timeout,
            f"{line!r} on the notify socket",
        )

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """`python -m hzsyncd run -c CONFIG` with stderr captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None):
        self.log = log
        environ = child_env(**(env or {}))
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hzsyncd", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environ,
            )

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float) -> None:
        wait_for(lambda: text in self.output(), timeout, f"{text!r} in the daemon's log")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
