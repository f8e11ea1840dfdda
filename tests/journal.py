"""A real systemd-journald for tests, in a journal namespace of its own, read back by journalctl.

    with running_journald() as journald:
        os.environ["HZSYNCD_JOURNAL_SOCKET"] = journald.socket_path   # hzsyncd.logs writes there
        ...
        entries = journald.read(HZSYNCD_OUTCOME="rejected")

`systemd-journald NAMESPACE` is how systemd runs a journal namespace (systemd-journald@.service,
LogNamespace=): it listens on /run/systemd/journal.NAMESPACE/ and stores under
/var/log/journal/MACHINE-ID.NAMESPACE/ (or /run/log/journal/… without /var/log/journal), and
`journalctl --namespace=NAMESPACE` reads just that. A system journald, if one runs, is not
touched, and neither are other test runs: every start gets a fresh name. Needs root (to create
those folders) and /etc/machine-id (without it journald stores nothing). On exit the process is
stopped and its folders removed; folders of an earlier run that died are removed at the next.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

JOURNALD = "/lib/systemd/systemd-journald"
PREFIX = "hzsyncd-test-"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def unavailable() -> str | None:
    """Why a test journald cannot run here, or None when it can."""
    if not os.access(JOURNALD, os.X_OK):
        return f"{JOURNALD} is not installed (Debian package systemd)"
    if shutil.which("journalctl") is None:
        return "journalctl is not installed"
    if os.geteuid() != 0:
        return "a journald of its own needs root (it creates folders in /run and /var/log)"
    return None


class Journald:
    """A running journald namespace: where to write, and how to read back."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.directory = Path(f"/run/systemd/journal.{namespace}")
        self.socket_path = str(self.directory / "socket")

    def read(self, n: int = 1, timeout: float = 5.0, **match: str) -> list[dict[str, Any]]:
        """Entries with all the `FIELD=value` matches, once at least `n` are there or at timeout.

        Values are as `journalctl -o json` gives them: strings, or lists of byte values for
        data that is not UTF-8. `--all` keeps values over 4096 bytes, otherwise shown as null.
        """
        argv = ["journalctl", f"--namespace={self.namespace}", "-o", "json", "--all"]
        argv += ["--no-pager", *(f"{name}={value}" for name, value in match.items())]
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            entries = [json.loads(line) for line in result.stdout.splitlines() if line[:1] == "{"]
            if len(entries) >= n or time.monotonic() >= deadline:
                return entries
            time.sleep(0.05)


@contextmanager
def running_journald() -> Iterator[Journald]:
    """Start a journald in a new namespace; stop it and remove its files on exit."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    machine_id = _machine_id()
    _remove_stale(machine_id)
    journald = Journald(f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(
            [JOURNALD, journald.namespace],
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
        )
        keepalive = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _wait_until_listening(journald, process, errors)
            # A namespace journald quits after 30 s without clients (it is meant to be socket
            # activated again). An open stdout stream counts as a client; it never sends.
            keepalive.connect(str(journald.directory / "stdout"))
            yield journald
        finally:
            keepalive.close()
            _stop(process)
            _remove(journald.namespace, machine_id)


def _machine_id() -> str:
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    if not machine_id:
        raise RuntimeError(
            "journald stores nothing without /etc/machine-id: systemd-machine-id-setup"
        )
    return machine_id


def _wait_until_listening(
    journald: Journald, process: subprocess.Popen[bytes], errors: Any
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    sockets = [Path(journald.socket_path), journald.directory / "stdout"]
    while not all(path.exists() for path in sockets):
        if process.poll() is not None or time.monotonic() >= deadline:
            errors.seek(0)
            state = f"exited with {process.returncode}" if process.returncode is not None else ""
            raise RuntimeError(
                f"journald {journald.namespace} not listening {state}: {errors.read()}"
            )
        time.sleep(0.01)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def _remove(namespace: str, machine_id: str) -> None:
    for path in (
        Path(f"/run/systemd/journal.{namespace}"),
        Path(f"/var/log/journal/{machine_id}.{namespace}"),
        Path(f"/run/log/journal/{machine_id}.{namespace}"),
    ):
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale(machine_id: str) -> None:
    """The folders of test namespaces whose test process is gone (killed before its cleanup)."""
    for directory in Path("/run/systemd").glob(f"journal.{PREFIX}*"):
        namespace = directory.name.removeprefix("journal.")
        pid = namespace.removeprefix(PREFIX).split("-")[0]
        # Its journald, if still running, quits by itself 30 s after the keepalive closed.
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(namespace, machine_id)
