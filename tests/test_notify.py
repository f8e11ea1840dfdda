"""sd_notify: the datagrams a real AF_UNIX socket receives, and the watchdog arithmetic."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hzsyncd.notify import Notifier

TIMEOUT = 2.0


class Listener:
    """The service manager's end: a bound SOCK_DGRAM socket, read with a bounded wait."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def nothing_more(self, wait: float = 0.1) -> bool:
        self.sock.settimeout(wait)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        return False


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A path socket in tmp_path, named by NOTIFY_SOCKET (in os.environ: libsystemd reads it)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield Listener(sock)


def test_ready_sends_ready_and_status(listener: Listener) -> None:
    Notifier().ready("watching 7 tables")
    assert listener.receive() == {"READY": "1", "STATUS": "watching 7 tables"}


def test_abstract_socket_receives_too(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hzsyncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready("up")
        assert Listener(sock).receive() == {"READY": "1", "STATUS": "up"}


def test_status_is_one_line_and_sent_only_when_changed(listener: Listener) -> None:
    notifier = Notifier()
    notifier.status("3 files\npending")
    notifier.status("3 files pending")
    notifier.status("idle")
    assert listener.receive() == {"STATUS": "3 files pending"}
    assert listener.receive() == {"STATUS": "idle"}
    assert listener.nothing_more()


def test_ready_after_reload_is_sent_even_with_the_same_status(listener: Listener) -> None:
    notifier = Notifier()
    notifier.ready("idle")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.ready("idle")
    assert listener.receive()["READY"] == "1"
    reloading = listener.receive()
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert listener.receive() == {"READY": "1", "STATUS": "idle"}


def test_stopping_sends_stopping(listener: Listener) -> None:
    Notifier().stopping()
    assert listener.receive() == {"STOPPING": "1"}


def test_watchdog_interval_is_a_quarter_of_watchdog_usec(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert Notifier().watchdog_interval == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval == 15.0


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    notifier = Notifier()
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert listener.nothing_more()


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_or_bad_watchdog_usec_means_no_watchdog(usec: str) -> None:
    environ = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": usec}
    assert Notifier(environ).watchdog_interval is None


def test_watchdog_pings_at_most_once_per_interval(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "800000")  # interval 0.2 s
    notifier = Notifier()
    assert notifier.watchdog_interval == pytest.approx(0.2)
    for _ in range(1000):
        notifier.watchdog()
    assert listener.receive() == {"WATCHDOG": "1"}
    assert listener.nothing_more()
    time.sleep(0.25)
    notifier.watchdog()
    assert listener.receive() == {"WATCHDOG": "1"}


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("up")
    notifier.status("busy")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()


def test_missing_socket_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1")
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("up")
    notifier.status("busy")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
